"""Resident host memory of DrivAerML training at scale: the main process plus its loader workers.

Each phase runs in a fresh process: the first start (every run processed into its cache), a
later start (caches checked, normalisation statistics merged), one training epoch of
``--train-points`` per run (drawn in the workers) and one validation pass at full resolution,
one run per batch. A sampler reads /proc/<pid>/smaps_rollup of the process and its descendants
every 20 ms and keeps each phase's peak of the summed RSS and PSS. RSS counts a page shared by
several processes (the libraries, a forked worker's copy-on-write pages, the page cache of a
mapped run) once per process; PSS divides it among them, so summed PSS is the memory the job
really holds: anonymous (private), file (mapped caches: page cache, reclaimable) and shmem
(batches on their way from the workers). The data is a synthetic set in the presampled layout (``run_<i>.npz``
with ``surface_mesh_centers`` float32 (N, 3) and ``surface_fields`` float32 (N, 4), random
values: the memory does not depend on them), written once under ``--root``; with ``--source vtp``
full-resolution surfaces as distributed (``run_<i>/boundary_<i>.vtp``: a triangulated sheet of N
cells with the cell arrays ``pMeanTrim`` and ``wallShearStressMeanTrim``, uncompressed) and a
``split.json``, read through VTK on the first start. Prints a table
and writes a record (``benchmarks/records.py``) into ``--out`` (default ``$OUT``, else
``benchmarks/records/drivaerml_memory/``).

    python benchmarks/drivaerml_memory.py --root /tmp/dml_mem --runs 100 --points 2000000 --workers 4
    python benchmarks/drivaerml_memory.py --root /tmp/dml_vtp --source vtp --runs 100 --points 2000000 --workers 4
    # another checkout (e.g. before this layout), same data:
    python benchmarks/drivaerml_memory.py --root /tmp/dml_mem --runs 100 --points 2000000 --code /path/to/checkout
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: `benchmarks.` imports resolve
SOURCES = ["datamodules/run_files.py", "datamodules/drivaerml.py", "datamodules/vtp.py", "datamodules/mesh_datamodule.py",
           "datamodules/mesh_cache.py", "datamodules/subsample.py", "datamodules/collate.py"]
PHASES = ("first start", "later start", "train epoch", "validation")
TEST_RUNS = 2


def write_set(root: Path, runs: int, points: int, test_runs: int = TEST_RUNS, geometry: bool = False) -> None:
    """``runs`` training and ``test_runs`` test archives of ``points`` points (kept if present); with
    ``geometry`` also unit ``surface_normals`` and ``surface_areas`` (what drag and lift need)."""
    for split, ids in (("train", range(1, runs + 1)), ("test", range(runs + 1, runs + 1 + test_runs))):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in ids:
            path = root / split / f"run_{i}.npz"
            if path.exists():
                continue
            rng = np.random.default_rng(i)
            arrays = {"surface_mesh_centers": rng.uniform(-1, 4, (points, 3)).astype(np.float32),
                      "surface_fields": rng.normal(0, 300, (points, 4)).astype(np.float32)}
            if geometry:
                normals = rng.normal(size=(points, 3)).astype(np.float32)
                arrays["surface_normals"] = normals / np.linalg.norm(normals, axis=1, keepdims=True)
                arrays["surface_areas"] = rng.uniform(0.5, 1.5, points).astype(np.float32) / points
            tmp = path.with_name(f".{path.name}.tmp.npz")
            np.savez(tmp, **arrays)
            os.replace(tmp, path)


def sheet(cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Points [P, 3] and triangles [cells, 3] of a wavy sheet of about ``cells`` triangles (two per
    quad of a grid; the count is rounded up to a whole grid)."""
    nx = int(np.ceil(np.sqrt(cells / 2)))
    ny = int(np.ceil(cells / (2 * nx)))
    x, y = np.meshgrid(np.linspace(0, 4, nx + 1), np.linspace(0, 1, ny + 1), indexing="ij")
    points = np.stack([x, y, 0.1 * np.sin(3 * x) * np.cos(2 * y)], -1).reshape(-1, 3)
    corner = (np.arange(nx)[:, None] * (ny + 1) + np.arange(ny)[None, :]).reshape(-1)
    quads = np.stack([corner, corner + ny + 1, corner + ny + 2, corner + 1], -1)
    triangles = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    return points, triangles


def write_vtp_set(root: Path, runs: int, points: int) -> None:
    """``runs`` + ``TEST_RUNS`` surfaces ``run_<i>/boundary_<i>.vtp`` and ``split.json`` (kept if present)."""
    from vtkmodules.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData
    from vtkmodules.vtkIOXML import vtkXMLPolyDataWriter

    xyz, triangles = sheet(points)
    n = len(triangles)
    split = {"train": list(range(1, runs + 1)), "test": list(range(runs + 1, runs + 1 + TEST_RUNS))}
    for i in split["train"] + split["test"]:
        path = root / f"run_{i}" / f"boundary_{i}.vtp"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(i)
        poly = vtkPolyData()
        pts = vtkPoints()
        pts.SetData(numpy_to_vtk(xyz.astype(np.float32), deep=True))
        poly.SetPoints(pts)
        cells = vtkCellArray()
        cells.SetData(numpy_to_vtkIdTypeArray(np.arange(0, 3 * n + 1, 3), deep=True),
                      numpy_to_vtkIdTypeArray(triangles.reshape(-1).astype(np.int64), deep=True))
        poly.SetPolys(cells)
        for name, values in (("pMeanTrim", rng.normal(0, 300, n)), ("wallShearStressMeanTrim", rng.normal(0, 3, (n, 3)))):
            array = numpy_to_vtk(values.astype(np.float32), deep=True)
            array.SetName(name)
            poly.GetCellData().AddArray(array)
        writer = vtkXMLPolyDataWriter()
        tmp = path.with_name(f".{path.name}.tmp.vtp")
        writer.SetFileName(str(tmp))
        writer.SetInputData(poly)
        writer.SetDataModeToAppended()
        writer.SetCompressorTypeToNone()
        writer.EncodeAppendedDataOff()
        if not writer.Write():
            raise OSError(f"{tmp}: VTK could not write it")
        os.replace(tmp, path)
    (root / "split.json").write_text(json.dumps(split))


# --- measuring (in the child process) ----------------------------------------------------
COLUMNS = {"Rss": "rss_gb", "Pss": "pss_gb", "Pss_Anon": "pss_anon_gb", "Pss_File": "pss_file_gb",
           "Pss_Shmem": "pss_shmem_gb"}


def _rollup(pid: int) -> dict[str, int]:
    """The ``COLUMNS`` of a process's smaps_rollup, in kB ({} once it has exited)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in COLUMNS:
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class Sampler(threading.Thread):
    """Per phase, the peak of each ``COLUMNS`` sum over this process and its descendants, of
    this process's own PSS, and of the number of processes."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.phase, self.peaks, self.stop = None, {}, threading.Event()

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.is_set():
            pids = [me, *_descendants(me)]
            stats = [_rollup(p) for p in pids]
            now = {col: sum(s.get(key, 0) for s in stats) / 2**20 for key, col in COLUMNS.items()}  # GB
            now.update(main_pss_gb=stats[0].get("Pss", 0) / 2**20, processes=len(pids))
            peak = self.peaks.setdefault(self.phase, dict.fromkeys(now, 0))
            peak.update({k: max(peak[k], v) for k, v in now.items()})
            time.sleep(0.02)


def train_phase(epochs: int) -> str:
    return "train epoch" if epochs == 1 else f"train, {epochs} epochs"


def child(args: argparse.Namespace) -> None:
    import inspect

    from datamodules.drivaerml import DrivAerMLDataModule
    from datamodules.mesh_datamodule import MeshDataModule

    options = dict(root=str(args.root), n_val=args.n_val, train_points=args.train_points, num_workers=args.workers,
                   batch_size=1, eval_batch_size=1, targets="pressure")
    if args.source == "vtp":
        options.update(source="vtp", split_file="split.json")
    if "prefetch_factor" in inspect.signature(MeshDataModule.__init__).parameters:  # older checkouts lack them
        options.update(prefetch_factor=args.prefetch, persistent_workers=True)
    sampler = Sampler()
    sampler.start()
    times, settled = {}, {}

    def phase(name: str, work) -> int:
        sampler.phase = name
        start = time.perf_counter()
        count = work()
        time.sleep(0.1)  # one more sample at the phase's end
        times[name] = time.perf_counter() - start
        settled[name] = 1 + len(_descendants(os.getpid()))  # the processes that stay (the peak may see a passing one)
        return count

    dm = DrivAerMLDataModule(**options)
    if args.child == "first start":
        phase("first start", lambda: dm.setup("fit"))
    else:
        phase("later start", lambda: dm.setup("fit"))
        loader, name = dm.train_dataloader(), train_phase(args.epochs)

        def epochs() -> int:  # persistent workers across epochs, as a fit runs them
            count = 0
            for epoch in range(args.epochs):
                loader.sampler.set_epoch(epoch)
                count += sum(1 for _ in loader)
            return count

        batches = phase(name, epochs)
        times["runs_per_s"] = batches / times[name]
        times["run_s"] = _one_run_seconds(dm)
        val = dm.val_dataloader()  # beside the training workers, which persist as they do in a fit
        phase("validation", lambda: sum(1 for _ in val))
    sampler.stop.set()
    sampler.join()
    for name, processes in settled.items():
        sampler.peaks[name]["processes_end"] = processes
    print(json.dumps({"peaks": sampler.peaks, "seconds": times}))


def _one_run_seconds(dm, runs: int = 4) -> float:
    """Seconds one process takes to prepare one training batch (map a run, draw its points,
    collate): the work of a loader worker, timed here without the others competing."""
    loader = dm.train_dataloader()
    dataset, collate = loader.dataset, loader.collate_fn
    runs = min(runs, len(dataset))
    start = time.perf_counter()
    for i in range(runs):
        collate([dataset[i]])
    return (time.perf_counter() - start) / runs


# --- the table and the record (in the parent) ----------------------------------------------
def measure(args: argparse.Namespace, which: str) -> dict:
    argv = [sys.executable, __file__, "--child", which, *args.argv]
    env = {**os.environ, "PYTHONPATH": str(args.code)}
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise SystemExit(f"{which} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def code_commit(code: Path) -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=code, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=code, capture_output=True, text=True)
    if head.returncode:
        return os.environ.get("FLARE_COMMIT", "unknown")
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def card() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"CPU: {model}, {os.cpu_count()} cores, {mem_gb:.0f} GB RAM"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="folder of the synthetic set (written if absent)")
    parser.add_argument("--runs", type=int, default=100, help="training runs (plus 2 test runs)")
    parser.add_argument("--points", type=int, default=2_000_000, help="points per run")
    parser.add_argument("--train-points", type=int, default=2**20, help="points per run and training step")
    parser.add_argument("--n-val", type=int, default=4, help="training runs held out and read at full resolution")
    parser.add_argument("--workers", type=int, default=4, help="loader workers (and cache-building processes)")
    parser.add_argument("--prefetch", type=int, default=2, help="batches each worker prepares ahead")
    parser.add_argument("--epochs", type=int, default=1,
                        help="training epochs in the training phase (persistent workers): memory must not grow")
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose datamodules are measured")
    parser.add_argument("--source", choices=["npz", "vtp"], default="npz",
                        help="presampled archives, or full-resolution .vtp surfaces (needs vtk)")
    parser.add_argument("--out", default=os.environ.get("OUT"),
                        help="folder for the record (default: $OUT, else benchmarks/records/drivaerml_memory/)")
    parser.add_argument("--child", choices=PHASES[:2], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.child:
        child(args)
        return {}
    if args.source == "vtp":
        write_vtp_set(args.root, args.runs, args.points)
    else:
        write_set(args.root, args.runs, args.points)
    shutil.rmtree(args.root / "processed", ignore_errors=True)  # the first start builds every cache
    results = [measure(args, "first start"), measure(args, "later start")]
    peaks = {k: v for r in results for k, v in r["peaks"].items() if k}
    seconds = {k: v for r in results for k, v in r["seconds"].items()}
    raw = args.root.glob("run_*/boundary_*.vtp") if args.source == "vtp" else args.root.glob("*/run_*.npz")
    raw_gb = sum(p.stat().st_size for p in raw) / 2**30
    cache_gb = sum(p.stat().st_size for p in (args.root / "processed").rglob("*.pt")) / 2**30
    commit = code_commit(args.code)
    sha, dirty = commit.removesuffix("-dirty"), commit.endswith("-dirty")
    layout = ("full-resolution DrivAerML layout (run_<i>/boundary_<i>.vtp, triangulated sheets, uncompressed)"
              if args.source == "vtp" else "presampled DrivAerML layout")
    data = (f"synthetic random fields in the {layout} (not DrivAerML): {args.runs} + "
            f"{TEST_RUNS} runs x {args.points} points, raw {raw_gb:.2f} GB, caches {cache_gb:.2f} GB")
    phases = [*PHASES[:2], train_phase(args.epochs), PHASES[3]]
    rows = [{"phase": name, "source": args.source, **peaks[name], "seconds": seconds[name]} for name in phases if name in peaks]
    environment = {"data": data, "source": args.source, "epochs": args.epochs, "train_points": args.train_points, "n_val": args.n_val, "workers": args.workers,
                   "prefetch": args.prefetch, "train_runs_per_s": seconds.get("runs_per_s"),
                   "one_worker_s_per_run": seconds.get("run_s")}
    print(f"{card()}; code {commit}; {data}")
    print(f"{args.workers} workers, prefetch {args.prefetch}, {args.train_points} training points per run\n")
    print("peak GB, summed over the main process and its workers (PSS: shared pages divided among them)")
    print(f"{'phase':<16}{'RSS':>7}{'PSS':>7}{'anon':>7}{'file':>7}{'shmem':>7}{'main PSS':>9}{'procs':>6}{'seconds':>9}")
    for row in rows:
        print(f"{row['phase']:<16}{row['rss_gb']:>7.2f}{row['pss_gb']:>7.2f}{row['pss_anon_gb']:>7.2f}"
              f"{row['pss_file_gb']:>7.2f}{row['pss_shmem_gb']:>7.2f}{row['main_pss_gb']:>9.2f}{row['processes']:>6}"
              f"{row['seconds']:>9.1f}")
    print(f"\ntraining loader: {environment['train_runs_per_s']:.2f} runs per second with {args.workers} workers; "
          f"one worker alone: {environment['one_worker_s_per_run']:.3f} s per run")
    from benchmarks.records import make_record, write_record

    fields = dict(card=card(), commit=(sha if sha != "unknown" else None, dirty), environment=environment,
                  command=" ".join(["python", "benchmarks/drivaerml_memory.py", *args.argv]))
    write_record("drivaerml_memory", rows, paths=SOURCES, out=args.out, **fields)
    return make_record("drivaerml_memory", rows, paths=SOURCES, **fields)


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
