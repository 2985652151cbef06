"""Standard-library-only helpers shared by every layer (CLI, dashboard, run directory, engine).

`dswb.util.fmt`: numbers, durations, times, byte sizes and text as short printable strings.
`dswb.util.atomic`: fsync helpers and atomic writes (a temporary in the same directory, then
`os.replace`). Nothing here imports anything outside the Python standard library, so the
dashboard's import wall and the engine can both use it.
"""
