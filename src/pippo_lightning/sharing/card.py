"""The model card (README.md) of a pushed checkpoint: what was trained on what, and how it scored."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pippo_lightning.metrics.report import metrics_table
from pippo_lightning.sharing.bundle import CONFIG_FILE, META_FILE, REPORT_FILE, WEIGHTS_FILE


# ------------------------------------------------------------------------------ model card
def _data_line(config: Mapping[str, Any]) -> str:
    data = config.get("data")
    if not isinstance(data, Mapping):
        return "not recorded"
    if data.get("synthetic"):
        studio = data["synthetic"]
        return (
            f"synthetic studio ({studio.get('num_train_subjects')} train / "
            f"{studio.get('num_val_subjects')} val subjects)"
        )
    return f"`{data.get('root')}` ({str(data.get('_target_', '')).rsplit('.', 1)[-1]})"


def _compressor_line(config: Mapping[str, Any]) -> str:
    node = config.get("compressor")
    if not isinstance(node, Mapping):
        return "not recorded"
    args = ", ".join(f"{k}={v}" for k, v in node.items() if k != "_target_")
    return f"`{str(node.get('_target_', '?')).rsplit('.', 1)[-1]}({args})`"


def model_card(
    repo_id: str,
    meta: Mapping[str, Any],
    config: Mapping[str, Any],
    report: Mapping[str, Any] | None,
) -> str:
    """The README.md of a pushed checkpoint: what it is, how it was trained and scored, how to
    run it. Metadata the Hub reads goes in the YAML front matter."""
    hp = meta.get("hyper_parameters") or {}
    stage = str(meta["stage_class"]).rsplit(".", 1)[-1]
    lines = [
        "---",
        "library_name: pippo_lightning",
        "tags: [pippo, multi-view, diffusion, novel-view-synthesis, pytorch-lightning]",
        "---",
        "",
        f"# {repo_id.split('/')[-1]}",
        "",
        "A [Pippo](https://arxiv.org/abs/2502.07785) multi-view diffusion checkpoint trained "
        "with `pippo_lightning`: one photo of a person in, consistent views out.",
        "",
        "| | |",
        "|---|---|",
        f"| stage | `{stage}` |",
        f"| model size | {hp.get('model_size', 'n/a')} |",
        f"| resolution | {hp.get('image_size', 'n/a')} px |",
        f"| views per sample (training) | {hp.get('num_views', 'n/a')} |",
        f"| training steps | {meta.get('global_step')} |",
        f"| weights | {'EMA' if meta.get('weights') == 'ema' else 'trained (no EMA)'} |",
        f"| data | {_data_line(config)} |",
        f"| compressor | {_compressor_line(config)} |",
        "",
    ]
    lines += _metrics_section(report)
    lines += [
        "## Use it",
        "",
        "```bash",
        f"pippo-generate ckpt=hf://{repo_id} photo=me.jpg num_views=24",
        f"pippo-eval ckpt=hf://{repo_id}",
        f"pippo-hub pull {repo_id} --out checkpoints/{repo_id.split('/')[-1]}  # a local copy",
        "```",
        "",
        "`hf://` checkpoints are pulled into the Hugging Face cache (HF_HOME) and loaded from "
        "safetensors. The compressor is not part of the weights: a pulled copy keeps the run's "
        "`config.yaml` as `.hydra/config.yaml` beside `checkpoints/last.ckpt`, where "
        "`compressor_from=run` finds it; otherwise pass the compressor above as overrides.",
        "",
        "## Files",
        "",
        f"- `{WEIGHTS_FILE}`: the network's weights",
        f"- `{META_FILE}`: stage class and hyper-parameters, to rebuild the stage",
        f"- `{CONFIG_FILE}`: the resolved training config ({meta.get('config_source')})",
    ]
    if report is not None:
        lines.append(f"- `{REPORT_FILE}`: the pippo-eval report the metrics above come from")
    return "\n".join(lines) + "\n"


def _metrics_section(report: Mapping[str, Any] | None) -> list[str]:
    if report is None:
        return ["## Evaluation", "", "No pippo-eval report was attached.", ""]
    data = report.get("data", {})
    lines = [
        "## Evaluation (pippo-eval)",
        "",
        f"{data.get('subjects')} subject(s) of the `{data.get('split')}` split, "
        f"{data.get('views_per_subject')} views each at {data.get('image_size')} px"
        f" (checkpoint step {report.get('global_step')}).",
        "",
        *metrics_table(report),
    ]
    return [*lines, ""]
