"""Memory accounting: vision KV cache per image, predicted peak memory, max video frames.

Peak memory is *predicted by executing* the pipelines on fake tensors
(:class:`torch._subclasses.fake_tensor.FakeTensorMode`: shapes, dtypes and devices, no data)
under :class:`LiveBytesTracker`, a ``TorchDispatchMode`` that sees every op's outputs, counts
each new storage's bytes when it is created and subtracts them when Python frees the storage
(a ``weakref.finalize`` on the storage). Views and in-place results share their input's
storage and are not counted again. Weights (and anything created before tracking starts) are
counted separately. So the prediction is what an eager caching-free allocator would hold:
no allocator rounding or fragmentation, no CUDA context, no library workspaces (cuBLAS).

The pipelines (:func:`image_request`, :func:`video_official`, :func:`video_streaming`) are the
reference model's own methods (``encode_multimodal``, ``encode_images_mini``, ``decode``) plus
the LLM's KV cache; stage peaks come from forward hooks on the component modules.
:func:`measure_cpu_peak` runs the same pipelines on real CPU tensors and reads the
allocator's own events (torch profiler memory timeline): the two agree within 10% (a test).

Max frames: the official per-frame video pipeline loads every frame's pixels at once, runs
CLIP + compression + the full pre-fusion one frame at a time, then one LLM prefill over all
frame tokens with HF-style fp32 logits at every position. Our streaming pipeline moves
``chunk`` frames of pixels at a time, batches them through CLIP, the compressor and
``FusedPreFusion.fuse_video``, and prefills the LLM in chunks keeping only the last
position's logits. Peaks for thousands of frames are composed from exact runs:
the vision phase is linear in the frame count (checked on three runs), the LLM phase is run
at the full frame count (one prefill on fake tensors is cheap).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from llava_mini import LlavaMini
from lmini_kernels import nvtx
from lmini_tools.progress import steps

GiB = 2**30
MB = 1e6

#: The paper's figures (MB per image) next to which the KV table is printed.
PAPER_KV_MB = {"llava-v1.5-7b": 360.0, "llava-mini-vicuna-7b": 0.6}

#: The model stages (``LlavaMini.stages``) whose peaks the tracker records.
TRACKED_STAGES = ("vit", "compression", "projector", "prefusion", "llm")


# ----------------------------------------------------------------------------- KV cache
def kv_bytes_per_token(config, dtype_bytes: int = 2) -> int:
    """K and V of one token in every LLM layer: 2 x layers x kv_heads x head_dim x bytes."""
    t = config.text
    return 2 * t.num_layers * t.num_kv_heads * t.head_dim * dtype_bytes


def _flop_model_config(name: str):
    """The config and LLM tokens per image for a model name of the FLOPs suite."""
    from llava_mini import LlavaMiniConfig

    base = name.removesuffix("-fused").removesuffix("-followup")
    if base == "llava-v1.5-7b@672":
        cfg = LlavaMiniConfig.from_name("llava-v1.5-7b")
        return cfg, 5 * cfg.vision.num_patches
    cfg = LlavaMiniConfig.from_name(base)
    return cfg, cfg.llm_tokens_per_image


KV_MODELS = (
    "llava-v1.5-7b",
    "llava-mini-vicuna-7b",
    "llava-mini-vicuna-7b-fused",
    "llava-mini-vicuna-7b-followup",
    "llava-v1.5-7b@672",
    "llava-mini-hd-vicuna-7b",
    "llava-mini-llama3.1-8b",
)


def kv_cache_table(dtype_bytes: int = 2) -> dict[str, dict[str, object]]:
    """Per model: the LLM K/V bytes of the tokens that represent one image, and what is counted."""
    out = {}
    for name in KV_MODELS:
        cfg, tokens = _flop_model_config(name)
        t = cfg.text
        per_tok = kv_bytes_per_token(cfg, dtype_bytes)
        row: dict[str, object] = {
            "bytes": per_tok * tokens,
            "tokens": tokens,
            "layers": t.num_layers,
            "kv_heads": t.num_kv_heads,
            "head_dim": t.head_dim,
            "dtype_bytes": dtype_bytes,
            "bytes_per_token": per_tok,
        }
        if name.endswith("-fused"):
            # our vision-prefix cache for follow-up questions: every pre-fusion layer's K/V of the
            # 576 CLIP rows and the C*C compressed rows (not part of the LLM cache)
            rows = cfg.prefusion_vision_tokens + cfg.num_queries
            row["prefusion_prefix_cache_bytes"] = (
                2 * cfg.prefusion_layers * t.num_kv_heads * t.head_dim * dtype_bytes * rows
            )
        out[name] = row
    return out


# ----------------------------------------------------------------------------- tracker
@dataclass
class _Alloc:
    nbytes: int
    category: str


class LiveBytesTracker(TorchDispatchMode):
    """Live bytes of every storage created while active; total, per category and per stage peaks.

    Categories: ``inputs`` and ``kv_cache`` (allocations made inside :meth:`stage` with that
    category) and ``activations`` (everything else). ``base_bytes`` (e.g. the weights) is added
    to every reported peak by :meth:`summary` but never tracked.
    """

    def __init__(self, base_bytes: int = 0) -> None:
        super().__init__()
        self.base_bytes = base_bytes
        self.live: dict[int, _Alloc] = {}
        self.current = 0
        self.peak = 0
        self.by_category: dict[str, int] = {}
        self.peak_by_category: dict[str, int] = {}
        self.stage_peaks: dict[str, int] = {}
        self._stages: list[str] = []
        self._category: list[str] = ["activations"]

    def _free(self, key: int) -> None:
        a = self.live.pop(key, None)
        if a is not None:
            self.current -= a.nbytes
            self.by_category[a.category] -= a.nbytes

    def _add(self, t: torch.Tensor) -> None:
        if t.device.type == "meta":  # shapes only, no memory (e.g. modules built on meta, then filled)
            return
        st = t.untyped_storage()
        key = st._cdata
        if key in self.live:
            return
        cat = self._category[-1]
        n = st.nbytes()
        self.live[key] = _Alloc(n, cat)
        self.current += n
        self.by_category[cat] = self.by_category.get(cat, 0) + n
        weakref.finalize(st, self._free, key)
        if self.current > self.peak:
            self.peak = self.current
            self.peak_by_category = dict(self.by_category)
        for s in self._stages:
            if self.current > self.stage_peaks.get(s, 0):
                self.stage_peaks[s] = self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage()._cdata for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage()._cdata not in inputs:
                self._add(t)
        return out

    @contextlib.contextmanager
    def stage(self, name: str, category: str | None = None) -> Iterator[None]:
        """Attribute the peak of this block to ``name`` (and allocations to ``category``)."""
        self._stages.append(name)
        self.stage_peaks[name] = max(self.stage_peaks.get(name, 0), self.current)
        if category:
            self._category.append(category)
        try:
            yield
        finally:
            self._stages.remove(name)
            if category:
                self._category.pop()

    def attach(self, model: nn.Module) -> list:
        """Forward hooks on the model's component modules so their peaks are recorded as stages."""
        handles = []
        for st in model.stages():
            if st.stage in TRACKED_STAGES:
                handles.append(st.module.register_forward_pre_hook(lambda *_, s=st.stage: self._enter(s)))
                handles.append(st.module.register_forward_hook(lambda *_, s=st.stage: self._leave(s)))
        return handles

    def _enter(self, s: str) -> None:
        self._stages.append(s)
        self.stage_peaks[s] = max(self.stage_peaks.get(s, 0), self.current)

    def _leave(self, s: str) -> None:
        self._stages.remove(s)

    def summary(self) -> dict[str, object]:
        """Peak (with ``base_bytes``), its breakdown, and every stage's peak (with ``base_bytes``)."""
        return {
            "peak_bytes": self.base_bytes + self.peak,
            "weights_bytes": self.base_bytes,
            "at_peak": {k: v for k, v in self.peak_by_category.items() if v},
            "stage_peak_bytes": {k: self.base_bytes + v for k, v in self.stage_peaks.items()},
        }


# ----------------------------------------------------------------------------- fake models
def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen, n = set(), 0
    for t in tensors:
        st = t.untyped_storage()
        if st._cdata not in seen:
            seen.add(st._cdata)
            n += st.nbytes()
    return n


def model_bytes(model: nn.Module) -> int:
    """Parameters and buffers."""
    return storage_bytes([*model.parameters(), *model.buffers()])


def build_fake_model(config, dtype: torch.dtype = torch.float16, backend: str = "auto"):
    """(fake_mode, model): the reference model with fake parameters (no memory, no data)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the target dtype: fake tensors cannot be converted in place
    try:
        with mode:
            model = LlavaMini(config, backend=backend).eval()
    finally:
        torch.set_default_dtype(previous)
    return mode, model


# ----------------------------------------------------------------------------- pipelines
@dataclass(frozen=True)
class Request:
    """What one request holds besides the model: text length, generated tokens, and, for video,
    frames and chunk sizes of the streaming pipeline."""

    text_tokens: int = 43
    new_tokens: int = 8
    frames: int = 1
    chunk_frames: int = LlavaMini.VIDEO_CHUNK_FRAMES["cuda"]  # the memory suite models a GPU
    prefill_chunk: int = 512


@contextlib.contextmanager
def _stage(tr: LiveBytesTracker | None, name: str, category: str | None = None):
    """A tracker stage (when tracking) and an NVTX range ``lmini.pipeline.<name>`` (LMINI_NVTX=1)."""
    with nvtx.range(f"lmini.pipeline.{name}"), tr.stage(name, category) if tr is not None else contextlib.nullcontext():
        yield


def _ids(model, req: Request) -> torch.Tensor:
    from llava_mini import IMAGE_TOKEN_INDEX

    ids = torch.ones(1, req.text_tokens + 1, dtype=torch.long, device=model.device)
    ids[:, 0] = IMAGE_TOKEN_INDEX
    return ids


def _pixels(model, frames: int, parts: int) -> torch.Tensor:
    v = model.config.vision
    return torch.zeros(1, frames, parts, 3, v.image_size, v.image_size, dtype=model.dtype, device=model.device)


def llm_phase(
    model,
    tr,
    vision: torch.Tensor,
    text: torch.Tensor,
    req: Request,
    *,
    official: bool,
    last_chunk_only: bool = False,
) -> torch.Tensor:
    """Splice (the placeholder is the first text position), allocate the KV cache, prefill, decode.

    ``official``: one prefill over the whole sequence with logits at every position upcast to
    float32 (HF ``LlamaForCausalLM`` as used by the official code). Otherwise chunked prefill
    (``req.prefill_chunk`` rows at a time) keeping only the last position's logits;
    ``last_chunk_only`` runs just the final prefill chunk and the final decode step (their
    transients are the largest: the mask spans every earlier slot; the KV cache is allocated in
    full either way), for predicting long videos quickly."""
    from llava_mini.llama import KVCache

    t = model.config.text
    x = torch.cat([vision.to(text.dtype), text[:, 1:]], dim=1)
    n = x.shape[1]
    total = n + req.new_tokens
    with _stage(tr, "kv_cache", "kv_cache"):
        caches = [KVCache(1, t.num_kv_heads, total, t.head_dim, dtype=model.dtype, device=model.device)
                  for _ in model.model.layers]  # fmt: skip
        key_valid = torch.zeros(1, total, dtype=torch.bool, device=model.device)
    key_valid[:, :n] = True
    pos = torch.arange(total, device=model.device)[None]
    with _stage(tr, "llm_prefill"):
        if official:
            last = model.decode(x, pos[:, :n], key_valid, caches, 0).float()[:, -1]
        else:
            step = req.prefill_chunk
            starts = range(0, n, step)
            if last_chunk_only and not official:
                starts = [max(0, n - step)]
            for s in starts:
                e = min(n, s + step)
                last = model.decode(x[:, s:e], pos[:, s:e], key_valid, caches, s)[:, -1]
    del x
    with _stage(tr, "decode"):
        steps = range(req.new_tokens - 1)
        for i in steps[-1:] if last_chunk_only else steps:
            token = last.argmax(-1)
            key_valid[:, n + i] = True
            last = model.decode(model.embed(token[:, None]), pos[:, n + i : n + i + 1], key_valid, caches, n + i)[:, -1]
    return last


def image_request(model, tr, req: Request = Request()) -> torch.Tensor:
    """One image (HD: its views) and a question, official pipeline, then ``new_tokens`` decoded."""
    with _stage(tr, "inputs", "inputs"):
        px = _pixels(model, 1, model.config.image_parts)[:, 0]
        ids = _ids(model, req)
    with torch.no_grad():
        with _stage(tr, "encode"):
            vision, text = model.encode_multimodal(ids, px, prefusion="official")
        return llm_phase(model, tr, vision, text, req, official=True)


def video_official(model, tr, req: Request, *, vision_only: bool = False):
    """Official video path: all frames' pixels on the device, one frame at a time through CLIP,
    compression and the full pre-fusion (``encode_multimodal``), one LLM prefill."""
    with _stage(tr, "inputs", "inputs"):
        px = _pixels(model, req.frames, 1)
        ids = _ids(model, req)
    with torch.no_grad():
        with _stage(tr, "encode"):
            vision, text = model.encode_multimodal(ids, px, prefusion="official")
        if vision_only:
            return vision
        return llm_phase(model, tr, vision, text, req, official=True)


def video_streaming(model, tr, req: Request, *, vision_only: bool = False):
    """Our streaming video path: ``chunk_frames`` frames' pixels at a time, batched through CLIP,
    the compressor and the projector, then :meth:`lmini_kernels.modules.FusedPreFusion.fuse_video`
    (pruned last layer, the question batched against every frame of a chunk, fused text summed
    in float32); chunked LLM prefill keeping only the last position's logits."""
    with _stage(tr, "inputs", "inputs"):
        ids = _ids(model, req)
    fused_prefusion = model.fused_prefusion()  # shares the model's pre-fusion parameters

    def chunks():
        for f0 in range(0, req.frames, req.chunk_frames):
            nf = min(req.chunk_frames, req.frames - f0)
            with _stage(tr, "inputs", "inputs"):
                px = _pixels(model, nf, 1)[0, :, 0]  # (nf, 3, H, W): the chunk's frames as a batch
            clip = model.encode_images(px)
            del px
            compressed, _ = model.compress(clip)
            vision = model.project(clip)
            del clip
            yield vision[None], model.project(compressed)[None]

    with torch.no_grad():
        text = model.embed(ids)
        with _stage(tr, "encode"):
            vision, text = fused_prefusion.fuse_video(chunks(), text, ids <= 0)
        if vision_only:
            return vision
        return llm_phase(model, tr, vision, text, req, official=False)


PIPELINES: dict[str, Callable] = {"official": video_official, "streaming": video_streaming}


def track(mode, model, fn: Callable[[LiveBytesTracker], object]) -> LiveBytesTracker:
    """Run ``fn(tracker)`` under ``mode`` (a FakeTensorMode or a device context) and the tracker."""
    tr = LiveBytesTracker(base_bytes=model_bytes(model))
    handles = tr.attach(model)
    try:
        with torch.no_grad(), mode, tr:
            fn(tr)
    finally:
        for h in handles:
            h.remove()
    return tr


# ----------------------------------------------------------------------------- long videos
@dataclass
class VideoPredictor:
    """Predicted peak bytes of a video request of T frames for one pipeline, composed from exact
    fake-tensor runs (see the module docstring)."""

    mode: object
    model: nn.Module
    pipeline: str
    req: Request = Request()
    _slope: float | None = None
    _offset: float | None = None

    def _vision_peak(self, frames: int) -> int:
        fn = PIPELINES[self.pipeline]
        req = _replace(self.req, frames=frames)
        return track(self.mode, self.model, lambda tr: fn(self.model, tr, req, vision_only=True)).peak

    def fit_vision(self) -> None:
        """Vision-phase peak = offset + slope x T, from runs at 3, 4 and 5 units (a frame, or a
        chunk for streaming; the first two differ: less from earlier units is live);
        raises if the three runs are not on one line."""
        unit = 1 if self.pipeline == "official" else self.req.chunk_frames
        p1, p2, p3 = (self._vision_peak(k * unit) for k in (3, 4, 5))
        if abs((p3 - p2) - (p2 - p1)) > 0.01 * max(1, p2 - p1):
            raise RuntimeError(f"{self.pipeline}: vision-phase peak not linear in frames ({p1}, {p2}, {p3})")
        self._slope = (p2 - p1) / unit
        self._offset = p1 - self._slope * 3 * unit

    def vision_peak(self, frames: int) -> int:
        """Run directly up to 5 units (where the line does not hold yet), from the line beyond."""
        unit = 1 if self.pipeline == "official" else self.req.chunk_frames
        if frames <= 5 * unit:
            memo = self.__dict__.setdefault("_vision_memo", {})
            if frames not in memo:
                memo[frames] = self._vision_peak(frames)
            return memo[frames]
        if self._slope is None:
            self.fit_vision()
        return int(self._offset + self._slope * frames)

    def llm_peak(self, frames: int) -> int:
        """LLM phase at the full frame count, with what the vision phase leaves live (the official
        path's pixels, the frame tokens, the fused text)."""
        m, req = self.model, _replace(self.req, frames=frames)
        hidden = m.config.text.hidden_size
        official = self.pipeline == "official"

        def run(tr):
            with tr.stage("inputs", "inputs"):
                keep = [_pixels(m, frames, 1)] if official else []
                ids = _ids(m, req)
            vision = torch.zeros(1, frames * m.config.num_queries, hidden, dtype=m.dtype, device=m.device)
            text = torch.zeros(1, ids.shape[1], hidden, dtype=m.dtype, device=m.device)
            llm_phase(m, tr, vision, text, req, official=official, last_chunk_only=True)
            del keep

        return track(self.mode, m, run).peak

    def peak(self, frames: int) -> int:
        """Predicted peak bytes (weights included); memoized per frame count."""
        memo = self.__dict__.setdefault("_memo", {})
        if frames not in memo:
            memo[frames] = model_bytes(self.model) + max(self.vision_peak(frames), self.llm_peak(frames))
        return memo[frames]

    def max_frames(self, budget_bytes: int) -> int:
        """Largest T with peak(T) <= budget (0 if not even one frame fits): secant steps on the
        (nearly linear) peak curve, then an exponential walk and bisection to the exact frame."""
        peak = self.peak
        if peak(1) > budget_bytes:
            return 0
        ta, tb = 1024, 2048
        for _ in range(6):
            pa, pb = peak(ta), peak(tb)
            slope = (pb - pa) / (tb - ta)  # bytes per frame, > 0
            if not slope > 0:
                break
            guess = max(1, int(tb + (budget_bytes - pb) / slope))
            if guess in (ta, tb):
                break
            ta, tb = tb, guess
        lo, step = tb, 1
        if peak(lo) <= budget_bytes:
            while peak(lo + step) <= budget_bytes:
                lo, step = lo + step, step * 2
            hi = lo + step
        else:
            hi = lo
            while peak(max(1, hi - step)) > budget_bytes:
                hi, step = max(1, hi - step), step * 2
            lo = max(1, hi - step)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if peak(mid) <= budget_bytes:
                lo = mid
            else:
                hi = mid
        return lo


def _replace(req: Request, **kw) -> Request:
    import dataclasses

    return dataclasses.replace(req, **kw)


# ----------------------------------------------------------------------------- real runs
def measure_cpu_peak(fn: Callable[[], object]) -> int:
    """Peak bytes allocated by ``fn`` on real CPU tensors, from the allocator's events (the torch
    profiler's memory timeline: CREATE/DESTROY of every allocation during ``fn``)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as p:
        fn()
    cur = peak = 0
    for _, action, _, size in p._memory_profile().timeline:
        name = getattr(action, "name", str(action))
        if name == "CREATE":
            cur += size
        elif name == "DESTROY":
            cur -= size
        peak = max(peak, cur)
    return peak


def measure_gpu(config, req: Request, pipeline: str = "official") -> dict[str, object]:
    """On a CUDA GPU: run ``pipeline`` for real (random weights) and report
    ``torch.cuda.max_memory_allocated`` and NVML's used-memory samples beside the prediction.

    A warm-up run first; what stays allocated after it besides the weights (cuBLAS workspace)
    is reported and subtracted from the measured peak (``max_memory_allocated_bytes``; the
    raw figure is ``max_memory_allocated_raw_bytes``). NVML's figure includes the CUDA context
    and the caching allocator's reserve."""
    import threading
    import time

    if not torch.cuda.is_available():
        return {"error": "no CUDA GPU: torch.cuda.is_available() is False"}

    mode, fake = build_fake_model(config)
    fn = PIPELINES[pipeline]
    predicted = track(mode, fake, lambda tr: fn(fake, tr, req)).summary()["peak_bytes"]
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    model = LlavaMini(config).to(device="cuda", dtype=torch.float16).eval()
    model.materialize_buffers("cuda")
    samples: list[int] = []
    stop = threading.Event()
    nvml_error = None
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())

        def sample() -> None:
            while not stop.is_set():
                samples.append(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
                time.sleep(0.005)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
    except Exception as exc:  # NVML missing or no driver: say so, keep the torch figure
        nvml_error, th = f"NVML: {exc}", None
    with torch.no_grad():
        fn(model, None, req)  # warm-up: kernel compilation, cuBLAS workspace (persistent, not modelled)
    torch.cuda.synchronize()
    workspace = torch.cuda.memory_allocated() - base - model_bytes(model)
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        fn(model, None, req)
    torch.cuda.synchronize()
    raw = torch.cuda.max_memory_allocated() - base
    measured = raw - workspace
    stop.set()
    if th is not None:
        th.join()
    del model
    torch.cuda.empty_cache()
    return {
        "config": config.name,
        "pipeline": pipeline,
        "frames": req.frames,
        "predicted_peak_bytes": predicted,
        "max_memory_allocated_bytes": measured,
        "max_memory_allocated_raw_bytes": raw,
        "persistent_workspace_bytes": workspace,
        "nvml_used_max_bytes": max(samples) if samples else None,
        "nvml_samples": len(samples),
        "nvml_error": nvml_error,
        "device": torch.cuda.get_device_name(),
    }


# ----------------------------------------------------------------------------- report
def memory_report(
    gpu_gb: list[float] | tuple[float, ...] = (24.0, 80.0),
    text_tokens: int = 43,
    *,
    measure_gpu: bool = False,
    model_name: str = "llava-mini-vicuna-7b",
    reserve_gb: float = 0.5,
) -> dict[str, object]:
    """The ``--json`` document: KV cache per image, image/video stage peaks at 7B fp16, max frames."""
    from llava_mini import LlavaMiniConfig

    if not gpu_gb or any(not (g > 0) for g in gpu_gb):
        raise ValueError(f"gpu_gb: expected positive GiB sizes, got {gpu_gb!r}")
    if not isinstance(text_tokens, int) or text_tokens < 1:
        raise ValueError(f"text_tokens: expected a positive int, got {text_tokens!r}")
    kv = kv_cache_table()
    req = Request(text_tokens=text_tokens)
    doc: dict[str, object] = {
        "dtype": "float16",
        "text_tokens": text_tokens,
        "kv_cache_bytes_per_image": {k: v["bytes"] for k, v in kv.items()},
        "kv_cache_detail": kv,
    }
    images = {}
    for name in steps(("llava-v1.5-7b", model_name, "llava-mini-hd-vicuna-7b"), "memory: image request"):
        mode, model = build_fake_model(LlavaMiniConfig.from_name(name))
        images[name] = track(mode, model, lambda tr, m=model: image_request(m, tr, req)).summary()
    doc["image_request"] = images

    mode, model = build_fake_model(LlavaMiniConfig.from_name(model_name))
    w = model_bytes(model)
    preds = {pipe: VideoPredictor(mode, model, pipe, req) for pipe in steps(PIPELINES, "memory: video pipeline")}
    video = {}
    for frames in (1000, 10000):
        video[str(frames)] = {
            pipe: {
                "peak_bytes": pred.peak(frames),
                "vision_phase_bytes": w + pred.vision_peak(frames),
                "llm_phase_bytes": w + pred.llm_peak(frames),
            }
            for pipe, pred in preds.items()
        }
    doc["video_peak"] = video
    reserve = int(reserve_gb * GiB)
    doc["max_frames"] = {
        pipe: {_gb_key(g): pred.max_frames(int(g * GiB) - reserve) for g in gpu_gb} for pipe, pred in preds.items()
    }
    doc["vision_phase_bytes_per_frame"] = {pipe: int(pred._slope) for pipe, pred in preds.items()}
    doc["max_frames_assumptions"] = {
        "model": model_name,
        "weights_bytes": model_bytes(model),
        "reserve_bytes": reserve,
        "reserve_for": "CUDA context, cuBLAS workspace, allocator slack (not tracked)",
        "per_frame_pixels_bytes": 3 * 336 * 336 * 2,
        "kv_bytes_per_frame": kv_bytes_per_token(model.config) * model.config.num_queries,
        "streaming_chunk_frames": req.chunk_frames,
        "streaming_prefill_chunk": req.prefill_chunk,
        "llm_context_positions": model.config.text.max_position_embeddings,
    }
    if measure_gpu:
        doc["gpu_check"] = measure_gpu_check()
    return doc


def _gb_key(g: float) -> str:
    return str(int(g)) if float(g).is_integer() else str(g)


def reduced_config():
    """A small LLaVA-Mini (real tensors fit on any machine) for the tracker-vs-reality checks."""
    import dataclasses

    from llava_mini import LlavaMiniConfig

    base = LlavaMiniConfig.from_name("tiny")
    vision = dataclasses.replace(base.vision, image_size=112, patch_size=14, hidden_size=256, intermediate_size=512,
                                 num_layers=3, num_heads=4)  # fmt: skip
    text = dataclasses.replace(base.text, vocab_size=2048, hidden_size=512, intermediate_size=1024, num_layers=3,
                               num_heads=8, num_kv_heads=4)  # fmt: skip
    return base.replace(name="reduced", vision=vision, text=text, compressor_heads=8, prefusion_layers=2)


def measure_gpu_check() -> dict[str, object]:
    """The reduced config's official video pipeline (8 frames) measured on the GPU."""
    return measure_gpu(reduced_config(), Request(frames=8), "official")


def _gib(n: int | float) -> str:
    return f"{n / GiB:7.2f}"


def format_report(doc: dict[str, object]) -> str:
    """The tables ``lmini profile memory`` prints."""
    kv: dict[str, dict] = doc["kv_cache_detail"]  # type: ignore[assignment]
    lines = [
        "Vision KV cache per image in the LLM (K and V, every layer, float16)",
        f"{'model':32s} {'tokens':>6s} {'layers':>6s} {'kv heads x dim':>14s} {'bytes/token':>11s} {'MB':>9s} "
        f"{'MiB':>9s} {'paper MB':>8s}",
    ]
    for name, r in kv.items():
        paper = PAPER_KV_MB.get(name)
        lines.append(
            f"{name:32s} {r['tokens']:6d} {r['layers']:6d} {str(r['kv_heads']) + ' x ' + str(r['head_dim']):>14s} "
            f"{r['bytes_per_token']:11d} {r['bytes'] / MB:9.3f} {r['bytes'] / 2**20:9.3f} "
            f"{'' if paper is None else format(paper, '.1f'):>8s}"
        )
        if "prefusion_prefix_cache_bytes" in r:
            mb = r["prefusion_prefix_cache_bytes"] / MB
            lines.append(
                f"{'':32s} + our pre-fusion vision-prefix cache (4 layers x 577 rows): {mb:.1f} MB, for follow-ups"
            )
    lines += [
        "The paper's 360 MB and 0.6 MB are 0.625 MB per token (x 576, x 1); Vicuna-7B in float16 holds",
        f"{kv['llava-v1.5-7b']['bytes_per_token'] / MB:.3f} MB per token (2 x 32 layers x 4096 x 2 bytes), "
        f"so 576 tokens are {kv['llava-v1.5-7b']['bytes'] / MB:.0f} MB. The ratio (576x) is the same.",
        "",
        "Predicted peak of one image request (float16, fake tensors; GiB; weights included)",
    ]
    images: dict[str, dict] = doc["image_request"]  # type: ignore[assignment]
    stages = ["vit", "compression", "projector", "prefusion", "kv_cache", "llm_prefill", "decode"]
    lines.append(f"{'model':26s} {'weights':>7s} " + " ".join(f"{s:>11s}" for s in stages) + f" {'peak':>7s}")
    for name, s in images.items():
        sp = s["stage_peak_bytes"]
        cells = " ".join(f"{(sp[k] / GiB):11.2f}" if k in sp else f"{'-':>11s}" for k in stages)
        lines.append(f"{name:26s} {_gib(s['weights_bytes'])} {cells} {_gib(s['peak_bytes'])}")
        at = s["at_peak"]
        parts = ", ".join(f"{k} {v / MB:.1f} MB" for k, v in sorted(at.items()))
        lines.append(f"{'':26s} live at the peak besides the weights: {parts}")
    lines += ["", "Predicted peak of a video request (GiB, weights included)"]
    for frames, row in doc["video_peak"].items():  # type: ignore[union-attr]
        for pipe, r in row.items():
            phases = f"vision phase {_gib(r['vision_phase_bytes'])}, LLM phase {_gib(r['llm_phase_bytes'])}"
            lines.append(f"  {int(frames):6d} frames, {pipe:9s}: peak {_gib(r['peak_bytes'])} ({phases})")
    mf: dict[str, dict[str, int]] = doc["max_frames"]  # type: ignore[assignment]
    a: dict = doc["max_frames_assumptions"]  # type: ignore[assignment]
    per_frame: dict = doc["vision_phase_bytes_per_frame"]  # type: ignore[assignment]
    sizes = list(next(iter(mf.values())))
    lines += [
        "",
        f"Max video frames ({a['model']}, float16 weights {a['weights_bytes'] / GiB:.2f} GiB, "
        f"{a['reserve_bytes'] / GiB:.1f} GiB reserved for context/workspaces)",
        f"{'pipeline':10s} " + " ".join(f"{s + ' GiB':>10s}" for s in sizes),
    ]
    for pipe, row in mf.items():
        lines.append(f"{pipe:10s} " + " ".join(f"{row[s]:10d}" for s in sizes))
    lines += [
        f"Per frame: pixels {a['per_frame_pixels_bytes'] / MB:.3f} MB (official: all loaded at once), LLM K/V "
        f"{a['kv_bytes_per_frame'] / MB:.3f} MB; official prefill also holds float32 logits for every position.",
        f"Vision phase, bytes held per extra frame: official {per_frame['official'] / MB:.2f} MB "
        "(its pixels, and the frame's whole pre-fusion output, pinned by the slice x[:, -L-q:-L] kept per frame "
        f"as in the official code), streaming {per_frame['streaming'] / MB:.3f} MB.",
        "The paper's '>10,000 frames in 24 GB' is KV-cache arithmetic: it leaves out the "
        f"{a['weights_bytes'] / GiB:.1f} GiB of weights, the pixels and the prefill activations.",
        f"Vicuna-7B was trained on {a['llm_context_positions']} positions: more frames than that fit in memory but "
        "are beyond the model's context.",
    ]
    if "gpu_check" in doc:
        lines += ["", f"GPU check: {doc['gpu_check']}"]
    return "\n".join(lines)


__all__ = [
    "LiveBytesTracker",
    "Request",
    "VideoPredictor",
    "build_fake_model",
    "image_request",
    "kv_bytes_per_token",
    "kv_cache_table",
    "measure_cpu_peak",
    "measure_gpu",
    "memory_report",
    "reduced_config",
    "track",
    "video_official",
    "video_streaming",
]
