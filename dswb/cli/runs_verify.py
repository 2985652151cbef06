"""`dswb runs verify`: check every checkpoint and final model of a run against its manifest.

Reads only (`dswb.rundir.manifest`); exits 1 when any file is missing, changed or unlisted.
"""

from __future__ import annotations

from typing import Annotated

import typer

from dswb.cli.common import DEFAULT_RUNS_ROOT, RunRef, RunsRoot, echo_json, print_table, safe_text, user_errors
from dswb.rundir import resolve_run
from dswb.util.fmt import fmt_bytes

VERIFY_RESULT = {"ok": "ok", "unverified": "unverified (no manifest)", "mismatch": "MISMATCH"}


@user_errors
def verify(run: RunRef, runs_root: RunsRoot = DEFAULT_RUNS_ROOT,
           as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False) -> None:
    """Check every checkpoint and final model of a run against its manifest (sizes, BLAKE2b checksums).

    Exits 1 if any file is missing, changed or unlisted. Directories written before manifests
    existed show as unverified. Example: `dswb runs verify latest`
    """
    from dswb.rundir.manifest import run_artifacts, verify_dir

    paths = resolve_run(run, runs_root)
    check, aside = run_artifacts(paths.root)
    results = [verify_dir(d) for d in check]
    bad = [r for r in results if r.status == "mismatch"]
    rel = lambda p: str(p.relative_to(paths.root))  # noqa: E731
    if as_json:
        echo_json({"run_id": paths.run_id, "ok": not bad, "set_aside": [rel(p) for p in aside],
                   "results": [{"path": rel(r.path), "status": r.status, "files": r.files, "bytes": r.bytes,
                                "problems": r.problems} for r in results]})
    elif not results:
        typer.echo(f"run {paths.run_id} has no checkpoints or final models yet")
    else:
        print_table(["directory", "files", "size", "result"],
                    [[rel(r.path), r.files or "-", fmt_bytes(r.bytes) if r.files else "-", VERIFY_RESULT[r.status]]
                     for r in results], numeric=(1, 2))
        for r in bad:
            for problem in r.problems:
                typer.echo(f"{rel(r.path)}: {safe_text(problem)}")
        for p in aside:
            why = "failed verification earlier" if not p.name.startswith(".tmp-") else "interrupted write, removed on resume"
            typer.echo(f"set aside, not checked: {rel(p)} ({why})")
        counts = {k: sum(r.status == k for r in results) for k in VERIFY_RESULT}
        typer.echo(f"{len(results)} checked: {counts['ok']} ok, {counts['unverified']} unverified, "
                   f"{counts['mismatch']} mismatch")
    if bad:
        raise typer.Exit(1)
