"""Write the analysis notebooks of this folder from the cell sources below.

Run ``python notebooks/build_notebooks.py`` after editing; the notebooks are committed
without outputs, and a test checks they match this file. Each notebook's first cell holds
its parameters: by default the newest ``runs/quickstart`` run, or ``$FLARE_RUN_DIR``
(``$FLARE_RUN_DIRS``, separated by ``os.pathsep``, for the training curves).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = '''\
import os
from pathlib import Path

from flare_lightning.runs import latest_run

# Relative paths in a run's config.yaml (the data root) start at the repository root.
REPO = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "configs").is_dir())
os.chdir(REPO)
'''

RUN_DIR = '''\
# Run folder: $FLARE_RUN_DIR, else the newest runs/quickstart run that has a best.ckpt.
RUN_DIR = Path(os.environ.get("FLARE_RUN_DIR") or latest_run("runs", "quickstart", required="best.ckpt"))
CHECKPOINT = "best.ckpt"
'''

LOAD = '''\
from flare_lightning.callbacks.sampled import take_samples
from flare_lightning.runs import load_datamodule, load_module

module = load_module(RUN_DIR, CHECKPOINT)
datamodule = load_datamodule(RUN_DIR)
datamodule.prepare_data()
datamodule.setup("test")
print(f"{RUN_DIR}: {sum(p.numel() for p in module.parameters()):,} parameters")
'''

SPECTRAL = [
    new_markdown_cell(
        "# Spectral analysis of a trained FLARE model\n\n"
        "Each FLARE block mixes the N points of a sample through M latents per head: "
        "`W_enc = softmax_N(q kᵀ)` [M, N] gathers, `W_dec = softmax_M(k qᵀ)` [N, M] scatters, and the "
        "token mixing `W_dec W_enc` [N, N] has rank at most M. Its non-zero eigenvalues are those of the "
        "M x M matrix `W_enc W_dec`, so the spectrum costs O(N M²); it is row-stochastic, so the leading "
        "eigenvalue is 1 and all lie in the unit disc. This notebook computes, for a trained checkpoint, the "
        "sorted spectra per block and head, effective ranks, head diversity and the latents' attention maps "
        "on the mesh (see `docs/spectral.md`)."
    ),
    new_code_cell(
        SETUP + RUN_DIR + "NUM_SAMPLES = 4  # test samples analysed\n"
        "BLOCK, HEAD = 0, 0  # whose latent attention maps are drawn\nprint(RUN_DIR)",
        metadata={"tags": ["parameters"]},
    ),
    new_code_cell(
        "%matplotlib inline\n"
        "import json\n\nimport numpy as np\nimport torch\nfrom IPython.display import display\n"
        "from matplotlib.figure import Figure\n\n"
        "from flare_lightning.analysis import (\n    analyse_mixers, capture_keys, latent_attention_maps, merge_batches,"
        " mixing_similarity, summarise,\n)\n"
        "from flare_lightning.analysis.fields import plot_latent_maps\n"
        "from flare_lightning.analysis.plots import head_colours, plot_effective_rank_history, plot_spectra\n\n"
        + LOAD
    ),
    new_markdown_cell("## Spectra per block, heads overlaid (mean over samples, band = one std)"),
    new_code_cell(
        "batches = take_samples(datamodule.test_dataloader(), NUM_SAMPLES)\n"
        "blocks = merge_batches([analyse_mixers(module, b['x'], b['mask']) for b in batches])\n"
        "summary = summarise(blocks)\n"
        "display(plot_spectra(summary))"
    ),
    new_markdown_cell(
        "## Effective rank and head diversity\n\n"
        "Effective rank: `exp` of the entropy of the normalised singular values (1 = one direction, M = flat). "
        "Diversity, 0 for identical heads: *spectra* is the total-variation distance between heads' normalised "
        "singular values; *mixing* is `1 - cos` between heads' mixing matrices (Frobenius)."
    ),
    new_code_cell(
        "for i, block in enumerate(summary['blocks']):\n"
        "    rank = block['effective_rank']\n"
        "    cells = ' | '.join(f'{m:5.2f} ± {s:4.2f}' for m, s in zip(rank['mean'], rank['std']))\n"
        "    div = block['diversity']\n"
        "    print(f\"block {i}: eff. rank per head {cells}; diversity spectra {div['spectra']['mean']:.3f}, \"\n"
        "          f\"mixing {div['mixing']['mean']:.3f}\")"
    ),
    new_markdown_cell("## Eigenvalues in the complex plane (first sample)"),
    new_code_cell(
        "fig = Figure(figsize=(3.6 * len(blocks), 3.6), layout='constrained')\n"
        "axes = fig.subplots(1, len(blocks), squeeze=False)[0]\n"
        "circle = np.exp(1j * np.linspace(0, 2 * np.pi, 200))\n"
        "colours = head_colours(blocks[0].eigenvalues.shape[1])\n"
        "for i, (ax, block) in enumerate(zip(axes, blocks)):\n"
        "    ax.plot(circle.real, circle.imag, color='0.7', lw=1)\n"
        "    for h, eig in enumerate(block.eigenvalues[0]):\n"
        "        ax.scatter(eig.real, eig.imag, s=12, color=colours[h], label=f'head {h}')\n"
        "    ax.set_aspect('equal')\n"
        "    ax.set_title(f'block {i}')\n"
        "axes[-1].legend(fontsize='small')\n"
        "display(fig)"
    ),
    new_markdown_cell("## How alike the heads mix: cos(T_h, T_g) per block (first sample)"),
    new_code_cell(
        "keys = capture_keys(module, batches[0]['x'], batches[0]['mask'])\n"
        "fig = Figure(figsize=(3.4 * len(keys), 3.0), layout='constrained')\n"
        "axes = fig.subplots(1, len(keys), squeeze=False)[0]\n"
        "for i, (ax, k) in enumerate(zip(axes, keys)):\n"
        "    image = ax.imshow(mixing_similarity(*k.weights(sample=0)).numpy(), vmin=0, vmax=1)\n"
        "    ax.set_title(f'block {i}')\n"
        "    ax.set_xlabel('head')\n"
        "    ax.set_ylabel('head')\n"
        "fig.colorbar(image, ax=axes[-1])\n"
        "display(fig)"
    ),
    new_markdown_cell(
        "## Latent attention maps on the mesh\n\n"
        "Rows of `W_enc` for one block and head: where each latent gathers its information from. "
        "Shown: the 8 latents with the most concentrated attention (highest peak weight)."
    ),
    new_code_cell(
        "maps = latent_attention_maps(module, batches[0]['x'], batches[0]['mask'], sample=0)[BLOCK][HEAD]  # [M, n]\n"
        "pos = batches[0]['pos'][0][batches[0]['mask'][0]].numpy()\n"
        "top = maps.max(dim=1).values.argsort(descending=True)[:8]\n"
        "display(plot_latent_maps(pos, maps[top].numpy(), titles=[f'block {BLOCK} head {HEAD} latent {int(m)}' for m in top]))"
    ),
    new_markdown_cell("## Effective rank over training (from the SpectralAnalysis callback's files)"),
    new_code_cell(
        "history = [json.loads(p.read_text()) for p in sorted((RUN_DIR / 'spectral').glob('epoch_*.json'))]\n"
        "if history:\n"
        "    display(plot_effective_rank_history(history))\n"
        "else:\n"
        "    print('no spectral/epoch_*.json in this run: train with the SpectralAnalysis callback to record them')"
    ),
    new_markdown_cell(
        "## Attention logits: is any softmax collapsing?\n\n"
        "Per mixer, the largest |logit| of encode (latents over points) and decode (points over latents) and the "
        "mean softmax entropy against uniform attention (`log` of the keys). Logits in the thousands with an "
        "entropy near 0 mean a one-hot softmax: attention-logit growth, the instability that wrecked the bf16 "
        "Transformer on Darcy (`benchmarks/ACCURACY.md`). The same function works for the SDPA baselines."
    ),
    new_code_cell(
        "from flare_lightning.analysis import attention_logit_stats\n\n"
        "stats = attention_logit_stats(module, batches[0]['x'], batches[0]['mask'])\n"
        "for s in stats:\n"
        "    print(f'{s.layer:16s} max |logit| {s.max_abs_logit:9.3g}   entropy {s.entropy:5.2f} of {s.max_entropy:5.2f} nats')\n"
        "fig = Figure(figsize=(10, 3.2), layout='constrained')\n"
        "left, right = fig.subplots(1, 2)\n"
        "names = [s.layer.replace('flare ', '') for s in stats]\n"
        "left.bar(names, [s.max_abs_logit for s in stats])\n"
        "left.set_yscale('log')\n"
        "left.set_ylabel('max |logit|')\n"
        "right.bar(names, [s.entropy / s.max_entropy for s in stats])\n"
        "right.set_ylim(0, 1)\n"
        "right.set_ylabel('entropy / uniform')\n"
        "for ax in (left, right):\n"
        "    ax.tick_params(axis='x', labelrotation=60, labelsize='small')\n"
        "display(fig)"
    ),
]

PREDICTIONS = [
    new_markdown_cell(
        "# Predictions of a trained model\n\n"
        "Loads a checkpoint and its datamodule, predicts the whole test split, and shows the fields and "
        "errors of the best, median and worst samples, then the error distribution."
    ),
    new_code_cell(SETUP + RUN_DIR + "print(RUN_DIR)", metadata={"tags": ["parameters"]}),
    new_code_cell(
        "%matplotlib inline\n"
        "import json\n\nimport numpy as np\nimport torch\nfrom IPython.display import display\n"
        "from matplotlib.figure import Figure\n\n"
        "from flare_lightning.analysis.fields import plot_predictions, samples_from_batch\n"
        "from flare_lightning.training.metrics import relative_l2\n"
        + LOAD
    ),
    new_code_cell(
        "samples, errors = [], []\n"
        "with torch.no_grad():\n"
        "    for i, batch in enumerate(datamodule.test_dataloader()):\n"
        "        out = module.predict_step(batch, i)\n"
        "        errors.append(relative_l2(out['pred'], batch['y'], batch['mask']))\n"
        "        samples += samples_from_batch(out['pred'], batch)\n"
        "errors = torch.cat(errors).numpy()\n"
        "print(f'{len(errors)} test samples: rel. L2 mean {errors.mean():.4f}, median {np.median(errors):.4f}, '\n"
        "      f'max {errors.max():.4f}')\n"
        "recorded = RUN_DIR / 'test_metrics.json'\n"
        "if recorded.is_file():\n"
        "    print('recorded by flare test:', json.loads(recorded.read_text()))"
    ),
    new_markdown_cell("## Best, median and worst test samples"),
    new_code_cell(
        "order = np.argsort(errors)\n"
        "picks = list(dict.fromkeys([order[0], order[len(order) // 2], order[-1]]))\n"
        "display(plot_predictions([samples[i] for i in picks]))"
    ),
    new_markdown_cell("## Error distribution over the test set"),
    new_code_cell(
        "pointwise = np.concatenate([np.abs(s.pred - s.target).ravel() / np.abs(s.target).max() for s in samples])\n"
        "fig = Figure(figsize=(10, 3.4), layout='constrained')\n"
        "left, right = fig.subplots(1, 2)\n"
        "left.hist(errors, bins=min(30, max(5, len(errors) // 2)))\n"
        "left.set_xlabel('relative L2 error per sample')\n"
        "left.set_ylabel('samples')\n"
        "right.hist(pointwise, bins=60, log=True)\n"
        "right.set_xlabel('|pred - target| / max |target|, per point')\n"
        "right.set_ylabel('points')\n"
        "display(fig)"
    ),
]

CURVES = [
    new_markdown_cell(
        "# Training curves\n\n"
        "Reads `metrics.csv` of one or several runs (CSVLogger) and compares their losses, validation "
        "errors and, when recorded, effective ranks (SpectralAnalysis) and attention logits per layer (AttentionLogits)."
    ),
    new_code_cell(
        SETUP
        + "# Runs to compare: $FLARE_RUN_DIRS (separated by os.pathsep), else the newest quickstart run.\n"
        "# e.g. RUN_DIRS = sorted(Path('runs/quickstart').glob('version_*'))\n"
        "RUN_DIRS = [Path(p) for p in os.environ.get('FLARE_RUN_DIRS', '').split(os.pathsep) if p] or [\n"
        "    latest_run('runs', 'quickstart')\n]\n"
        "KEYS = ['train/loss_epoch', 'val/rel_l2']  # metrics drawn against the epoch\n"
        "print(RUN_DIRS)",
        metadata={"tags": ["parameters"]},
    ),
    new_code_cell(
        "%matplotlib inline\n"
        "import json\n\nimport numpy as np\nfrom IPython.display import display\n"
        "from matplotlib.figure import Figure\n\n"
        "from flare_lightning.analysis.curves import curve, read_metrics\n"
        "from flare_lightning.runs import run_labels\n\n"
        "metrics = {label: read_metrics(run) for label, run in zip(run_labels(RUN_DIRS), RUN_DIRS)}\n"
        "for label, m in metrics.items():\n"
        "    print(label, sorted(k for k in m if k not in ('epoch', 'step')))"
    ),
    new_code_cell(
        "fig = Figure(figsize=(4.5 * len(KEYS), 3.4), layout='constrained')\n"
        "for ax, key in zip(fig.subplots(1, len(KEYS), squeeze=False)[0], KEYS):\n"
        "    for label, m in metrics.items():\n"
        "        if key in m:\n"
        "            ax.plot(*curve(m, key), marker='.', label=label)\n"
        "    ax.set_yscale('log')\n"
        "    ax.set_title(key)\n"
        "    ax.set_xlabel('epoch')\n"
        "    ax.grid(alpha=0.3)\n"
        "    ax.legend(fontsize='small')\n"
        "display(fig)"
    ),
    new_markdown_cell("## Best validation error and test metrics per run"),
    new_code_cell(
        "for run, (label, m) in zip(RUN_DIRS, metrics.items()):\n"
        "    epochs, val = curve(m, 'val/rel_l2')\n"
        "    test_file = run / 'test_metrics.json'\n"
        "    test = json.loads(test_file.read_text()) if test_file.is_file() else {}\n"
        "    print(f\"{label}: best val/rel_l2 {val.min():.4f} at epoch {int(epochs[val.argmin()])}; \"\n"
        "          f\"test/rel_l2 {test.get('test/rel_l2', float('nan')):.4f}\")"
    ),
    new_markdown_cell("## Effective rank per block over training (if SpectralAnalysis ran)"),
    new_code_cell(
        "rank_keys = sorted({k for m in metrics.values() for k in m if k.startswith('spectral/eff_rank/')})\n"
        "if rank_keys:\n"
        "    fig = Figure(figsize=(4.5 * len(rank_keys), 3.2), layout='constrained')\n"
        "    for ax, key in zip(fig.subplots(1, len(rank_keys), squeeze=False)[0], rank_keys):\n"
        "        for label, m in metrics.items():\n"
        "            if key in m:\n"
        "                ax.plot(*curve(m, key), marker='o', label=label)\n"
        "        ax.set_title(key)\n"
        "        ax.set_xlabel('epoch')\n"
        "        ax.legend(fontsize='small')\n"
        "    display(fig)\n"
        "else:\n"
        "    print('no spectral/eff_rank/* columns: train with the SpectralAnalysis callback to record them')"
    ),
    new_markdown_cell(
        "## Attention logits per layer over training (if AttentionLogits ran)\n"
        "\n"
        "Largest |logit| and mean softmax entropy of every attention on fixed validation samples. A layer whose\n"
        "largest logit jumps by orders of magnitude while its entropy falls towards 0 has collapsed to one-hot\n"
        "rows (benchmarks/ACCURACY.md, the Transformer on Darcy)."
    ),
    new_code_cell(
        "from flare_lightning.analysis.curves import layer_curves\n"
        "\n"
        "logged = False\n"
        "for label, m in metrics.items():\n"
        "    peaks, entropies = layer_curves(m, 'attn_logits/max_abs'), layer_curves(m, 'attn_logits/entropy')\n"
        "    if not peaks:\n"
        "        continue\n"
        "    logged = True\n"
        "    fig = Figure(figsize=(10, 3.4), layout='constrained')\n"
        "    ax_max, ax_ent = fig.subplots(1, 2)\n"
        "    for ax, curves in ((ax_max, peaks), (ax_ent, entropies)):\n"
        "        for layer, (epochs, values) in curves.items():\n"
        "            ax.plot(epochs, values, marker='.', label=layer)\n"
        "        ax.set_xlabel('epoch')\n"
        "        ax.grid(alpha=0.3)\n"
        "    ax_max.set_yscale('log')\n"
        "    ax_max.set_title(f'{label}: largest |logit|')\n"
        "    ax_ent.set_title('mean entropy [nats]')\n"
        "    ax_ent.legend(fontsize='x-small', ncol=2)\n"
        "    display(fig)\n"
        "    print(label, 'largest |logit| at the last record:', {layer: f'{v[-1]:.3g}' for layer, (_, v) in peaks.items()})\n"
        "if not logged:\n"
        "    print('no attn_logits/* columns: train with --trainer.callbacks+=flare_lightning.callbacks.AttentionLogits')"
    ),
]

NOTEBOOKS = {"spectral_analysis.ipynb": SPECTRAL, "predictions.ipynb": PREDICTIONS, "training_curves.ipynb": CURVES}


def build() -> dict[str, nbformat.NotebookNode]:
    """The notebooks, with stable cell ids so that rebuilding changes nothing."""
    out = {}
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=[nbformat.from_dict(c) for c in cells])
        for i, cell in enumerate(nb.cells):
            cell["id"] = f"{Path(name).stem}-{i}"
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
        nbformat.validate(nb)
        out[name] = nb
    return out


def main() -> None:
    for name, nb in build().items():
        nbformat.write(nb, HERE / name)
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
