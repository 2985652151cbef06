"""The terminal dashboard (Textual): watch, launch and control runs through their run directories.

Entry point: `dswb.tui.app.create_app(runs_root, attach=None)`. Import wall: nothing in this
package imports torch or transformers (tests check it in a subprocess); the engine never
imports Textual.
"""
