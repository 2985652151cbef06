"""`dswb eval MODEL_DIR|RUN[:stage]`: held-out accuracy of a saved model on the built-in task, or, with
`--tasks`, lm-evaluation-harness tasks (`dswb.cli.lm_eval_cmd`)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dswb.cli.common import DEFAULT_RUNS_ROOT, JsonOut, RunsRoot, resolve_model, user_errors
from dswb.util.atomic import write_json_atomic


@user_errors
def eval_model(
    target: Annotated[str, typer.Argument(help="A model directory, or RUN[:stage] (e.g. latest:grpo).")],
    task: Annotated[str, typer.Option("--task", help="Built-in task to score on.")] = "addition",
    n: Annotated[Optional[int], typer.Option("--n", min=1, help="Score only the first N test examples.")] = None,
    digits: Annotated[Optional[int], typer.Option("--digits", min=1, max=6, help="Task digits (default: the model's).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    tasks: Annotated[Optional[str], typer.Option(
        "--tasks", help="lm-eval tasks or groups, comma-separated (instead of the built-in task).")] = None,
    include: Annotated[Optional[list[str]], typer.Option(
        "--include", help="A directory of local lm-eval task YAML files (repeatable).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="lm-eval: examples per task.")] = None,
    num_fewshot: Annotated[Optional[int], typer.Option(
        "--num-fewshot", min=0, help="lm-eval: few-shot examples (default: the task's).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="lm-eval: batch size.")] = 8,
    runs_root: RunsRoot = DEFAULT_RUNS_ROOT,
    json_path: JsonOut = None,
) -> None:
    """Held-out exact-match accuracy of a causal LM, or pair accuracy of a reward model.

    Examples: `dswb eval latest:grpo`, `dswb eval runs/<id>/final/sft --n 200`, `dswb eval latest:rm`,
    `dswb eval latest:sft --tasks hellaswag --limit 100` (lm-eval; on a run, also an `eval` event).
    """
    model_dir = resolve_model(target, runs_root)
    if tasks is not None:
        from dswb.cli.lm_eval_cmd import run_lm_eval

        run_lm_eval(target, model_dir, tasks, include=include or [], limit=limit, num_fewshot=num_fewshot,
                    batch_size=batch_size, device=device, json_path=json_path)
        return
    from dswb.engine.eval.saved_model import evaluate_model  # heavy: torch + transformers

    result = evaluate_model(model_dir, n=n, device=device, kind=task, digits=digits)
    t = result["task"]
    typer.echo(f"model    {result['model']}  ({result['kind']}, stage {result.get('stage') or '-'})")
    typer.echo(f"task     {t['kind']}, {t['digits']} digits, seed {t['seed']}: {result['n']} held-out test examples")
    if result["kind"] == "reward_model":
        parts = [f"pair accuracy {100 * result['pair_acc']:.1f}%"]
        for kind in ("near", "random"):
            if f"pair_acc_{kind}" in result:
                parts.append(f"{kind} negatives {100 * result[f'pair_acc_{kind}']:.1f}%")
        typer.echo("result   " + ", ".join(parts))
    else:
        typer.echo(f"result   exact match {100 * result['exact_match']:.1f}%")
    typer.echo(f"time     {result['seconds']:.1f}s")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(json_path, result, fsync=False, indent=2)
        typer.echo(f"wrote {json_path}")
