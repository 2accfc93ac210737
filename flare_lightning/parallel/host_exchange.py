"""Collectives among the ranks of one host through a shared-memory segment.

A gloo collective costs about a millisecond even for a few bytes (TCP on the loopback
device, and a wake-up of gloo's worker threads), and a context-parallel step waits for
~26 of them on the GPU's critical path. Ranks on one host can instead exchange bytes
through ``/dev/shm``: each rank writes its tensor into its own slot and then a sequence
number; the others spin (yielding the core) until every rank's number has arrived, and
read the slots. An all-reduce is an exchange followed by the same reduction in rank order
on every rank, so every rank gets bitwise the same result.

Slots come in two parities (exchange s uses parity s % 2): a rank cannot write exchange
s + 2 before every rank has finished exchange s + 1, hence has finished reading exchange s.
Tensors larger than a slot go through in slot-sized pieces. Used only on Linux x86-64 (its
stores are seen by other cores in program order: data before sequence number), for groups
whose ranks all run on one host; elsewhere ``exchange_for`` returns None and callers use gloo.
``FLARE_HOST_EXCHANGE=0`` turns it off.
"""

from __future__ import annotations

import mmap
import os
import platform
import socket
import time
import uuid
import weakref
import zlib
import torch
import torch.distributed as dist
from torch import Tensor

LINE = 64  # bytes of a rank's header (its own cache line): [seq, nbytes and tag of parity 0, of parity 1]
SLOT_BYTES = 1 << 20  # per rank and parity; 4 MiB of /dev/shm for two ranks
SPINS = 2000  # busy polls (~50 us) before napping
NAP_S = 2e-5
TIMEOUT_S = float(os.environ.get("FLARE_HOST_EXCHANGE_TIMEOUT_S", 600))

_REDUCE = {
    dist.ReduceOp.SUM: torch.Tensor.add_,
    dist.ReduceOp.PRODUCT: torch.Tensor.mul_,
    dist.ReduceOp.MAX: lambda acc, x: torch.maximum(acc, x, out=acc),
    dist.ReduceOp.MIN: lambda acc, x: torch.minimum(acc, x, out=acc),
}


class HostExchange:
    """Shared-memory exchange among the ``world`` ranks of one group on one host
    (made collectively by ``exchange_for``)."""

    def __init__(self, segment: mmap.mmap, rank: int, world: int, slot_bytes: int) -> None:
        self.segment, self.rank, self.world, self.slot_bytes = segment, rank, world, slot_bytes
        self.header = LINE * world
        buf = memoryview(segment)
        self.seqs = buf[: self.header].cast("q")  # seqs[r * LINE // 8]: exchanges rank r has written; then per parity
        # the byte count and tag of its last exchange of that parity, checked by every reader
        self.data = torch.frombuffer(buf, dtype=torch.uint8, offset=self.header)
        self.seq = 0

    @staticmethod
    def size(world: int, slot_bytes: int = SLOT_BYTES) -> int:
        """Bytes of the segment: sequence lines, then 2 parities x world slots."""
        return LINE * world + 2 * world * slot_bytes

    def _slot(self, seq: int, rank: int, nbytes: int) -> Tensor:
        start = ((seq % 2) * self.world + rank) * self.slot_bytes
        return self.data[start : start + nbytes]

    def exchange(self, x: Tensor, tag: str = "exchange") -> list[Tensor]:
        """Every rank's ``x`` (contiguous, on any device, at most ``slot_bytes``) as CPU views
        [rank] of the same shape; valid until this rank's second exchange after this one.
        Ranks that pass different byte counts or tags (e.g. one rank skipped a collective)
        get a RuntimeError instead of each other's bytes."""
        nbytes = x.numel() * x.element_size()
        if nbytes > self.slot_bytes:
            raise ValueError(f"HostExchange.exchange: {nbytes} bytes exceed the {self.slot_bytes}-byte slot")
        self.seq += 1
        seq, line = self.seq, LINE // 8
        mine = self._slot(seq, self.rank, nbytes).view(x.dtype)
        mine.copy_(x.detach().reshape(-1))  # from a GPU: a synchronous copy, after the kernels that made x
        mine_sent, field = (nbytes, zlib.crc32(tag.encode())), 1 + 2 * (seq % 2)
        self.seqs[self.rank * line + field], self.seqs[self.rank * line + field + 1] = mine_sent
        self.seqs[self.rank * line] = seq  # published after the data (x86-64 keeps store order)
        self._wait(seq)
        sent = [(self.seqs[r * line + field], self.seqs[r * line + field + 1]) for r in range(self.world)]
        if len(set(sent)) > 1:
            odd = [r for r, got in enumerate(sent) if got != mine_sent]
            raise RuntimeError(
                f"HostExchange: exchange {seq} is {tag!r} of {nbytes} bytes on rank {self.rank}, but ranks {odd} sent "
                f"another collective or size: the ranks took different code paths (e.g. an error on one rank)")
        return [self._slot(seq, r, nbytes).view(x.dtype).view(x.shape) for r in range(self.world)]

    def _wait(self, seq: int) -> None:
        """Until every rank has published exchange ``seq``: spin briefly, then sleep in short
        naps (a spinning rank must not hold a core that a peer's OpenMP team needs)."""
        start, spins = time.monotonic(), 0
        for r in range(self.world):
            while self.seqs[r * LINE // 8] < seq:
                spins += 1
                if spins < SPINS:
                    continue
                time.sleep(NAP_S)
                if spins % 1024 == 0 and time.monotonic() - start > TIMEOUT_S:
                    late = [q for q in range(self.world) if self.seqs[q * LINE // 8] < seq]
                    raise RuntimeError(
                        f"HostExchange: ranks {late} of the group did not reach exchange {seq} within "
                        f"{TIMEOUT_S:.0f} s (FLARE_HOST_EXCHANGE_TIMEOUT_S): a rank died or took another code path")

    def _pieces(self, x: Tensor):
        """(flat view, start, stop) element ranges of ``x`` that fit one slot each."""
        flat = x.reshape(-1)
        step = max(1, self.slot_bytes // x.element_size())
        for lo in range(0, max(flat.numel(), 1), step):
            yield flat, lo, min(lo + step, flat.numel())

    def all_reduce_(self, x: Tensor, op=dist.ReduceOp.SUM, on_device: bool | None = None) -> Tensor:
        """In-place all-reduce of contiguous ``x`` (SUM, PRODUCT, MAX, MIN), reduced in rank order.

        ``on_device`` (default: x is not on the CPU) reduces on x's device, one host copy per
        rank, instead of with host threads that would compete with the peers' for cores."""
        if not x.is_contiguous():
            raise ValueError("HostExchange.all_reduce_ reduces in place: x must be contiguous")
        reduce = _REDUCE[op]
        on_device = x.device.type != "cpu" if on_device is None else on_device
        for flat, lo, hi in self._pieces(x):
            parts = self.exchange(flat[lo:hi], f"all_reduce {op} {x.dtype}")
            with torch.no_grad():
                if on_device:
                    out = flat[lo:hi]
                    out.copy_(parts[0])
                    for part in parts[1:]:
                        reduce(out, part.to(out.device))
                else:
                    acc = parts[0].clone()
                    for part in parts[1:]:
                        reduce(acc, part)
                    flat[lo:hi].copy_(acc)
        return x

    def all_gather_(self, parts: list[Tensor], x: Tensor) -> list[Tensor]:
        """``parts[r]`` = rank r's ``x`` (``parts`` contiguous, shaped like ``x``, on any device)."""
        if not all(part.is_contiguous() for part in parts):
            raise ValueError("HostExchange.all_gather_ writes into parts: they must be contiguous")
        for flat, lo, hi in self._pieces(x.contiguous()):
            got = self.exchange(flat[lo:hi], f"all_gather {x.dtype}")
            with torch.no_grad():
                for part, piece in zip(parts, got):
                    part.reshape(-1)[lo:hi].copy_(piece)
        return parts


_EXCHANGES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # process group -> HostExchange | False


_PLATFORM_OK = platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")  # store order, /dev/shm


def supported(op=dist.ReduceOp.SUM) -> bool:
    """True where the exchange may be used at all (platform, switch, reduction)."""
    return _PLATFORM_OK and os.environ.get("FLARE_HOST_EXCHANGE", "1") != "0" and op in _REDUCE


def exchange_for(group=None) -> HostExchange | None:
    """The group's exchange, made on first use (collective over ``group``: every rank must get
    here at the same point); None when its ranks span hosts or /dev/shm lacks room."""
    key = dist.group.WORLD if group is None else group
    if key in _EXCHANGES:
        return _EXCHANGES[key] or None
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    size = HostExchange.size(world)
    hosts: list = [None] * world
    dist.all_gather_object(hosts, socket.gethostname(), group=group)
    path = [None]
    if rank == 0 and len(set(hosts)) == 1:
        path[0] = _create(size)
    dist.broadcast_object_list(path, src=dist.get_global_rank(key, 0), group=group)
    if path[0] is None:
        _EXCHANGES[key] = False
        return None
    try:  # one host name need not mean one /dev/shm (containers): every rank must map the file
        with open(path[0], "r+b") as fh:
            segment = mmap.mmap(fh.fileno(), size)
    except OSError:
        segment = None
    mapped: list = [None] * world
    dist.all_gather_object(mapped, segment is not None, group=group)
    if rank == 0:
        os.unlink(path[0])  # every rank has tried: the mappings stay, the name can go
    if not all(mapped):
        _EXCHANGES[key] = False
        return None
    exchange = HostExchange(segment, rank, world, SLOT_BYTES)
    _EXCHANGES[key] = exchange
    return exchange


def _create(size: int, folder: str = "/dev/shm") -> str | None:
    """A zero-filled file of ``size`` bytes in ``folder`` (None where there is no room): every
    page is written now, so a full /dev/shm fails here and not mid-step."""
    try:
        stat = os.statvfs(folder)
        if stat.f_bavail * stat.f_frsize < 2 * size:
            return None
        path = os.path.join(folder, f"flare_exchange_{uuid.uuid4().hex[:16]}")
        with os.fdopen(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), "wb") as fh:
            fh.write(bytes(size))
        return path
    except OSError:
        return None


__all__ = ["HostExchange", "exchange_for", "supported"]
