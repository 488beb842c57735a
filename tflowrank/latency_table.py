"""Latency of single-layer op chains on a profiling target, as a lookup table cached on disk.

``tflowrank.search(cost="latency")`` asks, for each candidate layer, what the layer itself costs
and what each replacing chain costs at a few ranks. Each question is one ``Chain``: a one-layer
Keras model with a batch-1 input of the layer's input shape, holding a copy of the layer (its
config and weights) or the factorized class at that rank (random factors: latency does not depend
on their values), exported like the model that will be deployed (full int8 with int8 input and
output, so no QUANTIZE / DEQUANTIZE op is timed that the whole model would not run; or float32)
and timed with ``tflowrank.profile`` on the chosen target. The whole model is a ``WholeModel``,
exported as ``export_tflite`` exports it by default.

The TFLite converter leaks about 20 MB per ``convert()`` (TF 2.21), so the chains are converted
in a child process (``python -m tflowrank.latency_table SPEC``, at most
``_JOBS_PER_WORKER`` per child) that writes .tflite files into a temporary folder. They are timed
with ``tflowrank.profile(repeats=_ROUNDS)``: every file once per round, in process each round in
a fresh child process (LiteRT without TensorFlow): on the development host the same .tflite files
time up to 15% apart from one process to another (and their ratios up to 10%), which a median
over processes evens out. An entry is the median over its rounds of the median of ``runs``
invocations.

``LatencyTable`` keys each entry by its content: the layer's class and config (its name left
out), the input shape, the chain class and rank, the dtype, the profiling settings that change
latency (target, runner, threads, XNNPACK, delegates, CPU mask, device serial; not ``runs``) and
the machine (host name, CPU, TensorFlow and LiteRT versions). The table is a JSON file reused
across models and searches, or, without a path, a dictionary kept for the life of the process.
``layer_latencies`` reads it for ``search``: the original layer and a handful of ranks per chain
are measured, and the latency of any other rank is interpolated in MACs; ``LayerLatencies.refine``
then measures the ranks around those a plan chose, and ``LayerLatencies.measured()`` gives
costs to measured ranks only, for the final choice.
"""

import copy
import hashlib
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Chain", "WholeModel", "LatencyTable", "LayerLatencies", "layer_latencies",
           "latency_ranks", "neighbours", "DTYPES"]

DTYPES = ("int8", "float32")
_FORMAT = 1
_ROUNDS = 5  # each entry: the median over rounds (processes) of the median of `runs` invocations
_JOBS_PER_WORKER = 40  # conversions per child process (the converter leaks ~20 MB each)
_CALIBRATION_SAMPLES = 8  # random inputs calibrating a chain's int8 ranges
_WHOLE_MODEL_SAMPLES = 100
_POINTS = 4  # ranks of a chain measured among those given, plus the largest that saves MACs
_NEIGHBOURHOOD = (0.8, 0.9, 1.1, 1.25)  # MACs of the ranks measured around a chosen one
_PROFILE_DEFAULTS = {"target": "host", "threads": 1, "runs": 100, "warmup_runs": 10}
_PROFILE_KEYS = ("target", "threads", "runs", "warmup_runs", "benchmark_binary", "serial",
                 "xnnpack", "gpu", "nnapi", "cpu_mask", "timeout")
_NOT_KEYED = ("runs", "warmup_runs", "timeout")  # how long to measure, not what is measured
_WORKER_TAG = "tflowrank-latency-worker:"
_MEMORY = {}  # the table of the process, for LatencyTable(path=None)


# -- what is measured -------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Chain:
    """One op chain alone: ``layer`` itself (``chain`` None) or ``chain`` (a tflowrank layer
    class) replacing it at ``rank``, for inputs of ``input_shape`` (batch first; made 1)."""

    layer: object
    input_shape: tuple
    chain: type | None = None
    rank: object = None

    def key(self):
        config = dict(self.layer.get_config())
        config.pop("name", None)
        return {"layer": _class_name(type(self.layer)), "config": config,
                "input_shape": [1, *self.input_shape[1:]],
                "chain": None if self.chain is None else _class_name(self.chain),
                "rank": list(self.rank) if isinstance(self.rank, tuple) else self.rank}

    def describe(self):
        what = "itself" if self.chain is None else f"{self.chain.__name__} rank {self.rank}"
        return f"{self.layer.name} ({type(self.layer).__name__}) {what} on {tuple(self.input_shape[1:])}"

    def job(self, file, dtype):
        """What the child process needs to build and export this chain (JSON and arrays)."""
        import keras

        shape = [1, *self.input_shape[1:]]
        if any(d is None for d in shape):
            raise ValueError(f"cost='latency' needs static input shapes: layer {self.layer.name!r} "
                             f"sees inputs of shape {tuple(self.input_shape)}.")
        if self.chain is None:
            layer = self.layer.__class__.from_config(self.layer.get_config())
            weights = [np.asarray(w) for w in self.layer.get_weights()]
        else:
            config = self.chain._config_from(self.layer)
            layer = self.chain(rank=self.rank, **config)
            weights = None
        return {"file": file, "layer": keras.saving.serialize_keras_object(layer),
                "input_shape": shape, "dtype": dtype}, weights


@dataclass(frozen=True, eq=False)
class WholeModel:
    """The whole model, exported as it would be deployed (``representative_data``: int8
    calibration inputs, random ones when None)."""

    model: object
    representative_data: object = None

    def key(self):
        return {"model": json.loads(self.model.to_json()),
                "input_shape": [1, *self.model.inputs[0].shape[1:]]}

    def describe(self):
        return f"model {self.model.name!r}"


def _class_name(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


# -- the table --------------------------------------------------------------------------------------

class LatencyTable:
    """Latencies in microseconds of ``Chain`` / ``WholeModel`` items on one profiling target.

    Args:
        path: the JSON file of the table (created when missing, entries added as they are
            measured, written atomically); None keeps the table in memory for this process.
        dtype: ``"int8"`` (full integer, as deployed by ``export_tflite(quantize="int8")``) or
            ``"float32"``.
        profile_options: ``tflowrank.profile`` arguments: ``target`` (``"host"``, the default, or
            ``"android"``), ``threads`` (1), ``runs`` (100), ``warmup_runs`` (10),
            ``benchmark_binary``, ``serial``, ``xnnpack``, ``gpu``, ``nnapi``, ``cpu_mask``,
            ``timeout``.
    """

    def __init__(self, path=None, dtype="int8", profile_options=None):
        from ._io import output_path

        self.path = None if path is None else output_path(path, "latency_cache")
        if dtype not in DTYPES:
            raise ValueError(f"`latency_dtype` must be one of {', '.join(map(repr, DTYPES))}. "
                             f"Received: latency_dtype={dtype!r}")
        self.dtype = dtype
        self.profile_options = check_profile_options(profile_options)
        self._settings = None
        self._entries = _MEMORY if self.path is None else self._read()

    def lookup(self, items, progress=False):
        """The latency of each item (``Chain`` or ``WholeModel``), measuring those not in the
        table in one batch; returns a list of floats in the order of ``items``."""
        keys = [self._key(item) for item in items]
        missing = {}
        for key, item in zip(keys, items):
            if key not in self._entries and key not in missing:
                missing[key] = item
        if missing:
            self._entries.update(self._measure(missing, progress))
            if self.path is not None:
                self._write()
        return [float(self._entries[key]["us"]) for key in keys]

    def __len__(self):
        return len(self._entries)

    # -- keys -----------------------------------------------------------------------------------
    def settings(self):
        """What, besides the item, the latency depends on: dtype, profiling settings, machine."""
        if self._settings is None:
            options = {k: v for k, v in self.profile_options.items() if k not in _NOT_KEYED}
            options["runner"] = _runner(self.profile_options)
            options.pop("benchmark_binary", None)
            self._settings = {"format": _FORMAT, "dtype": self.dtype, "profile": options,
                              "machine": machine_id()}
        return self._settings

    def _key(self, item):
        text = json.dumps({"item": item.key(), "settings": self.settings()}, sort_keys=True,
                          default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    # -- the file -------------------------------------------------------------------------------
    def _read(self, warn=True):
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text())
            entries = data["entries"] if data.get("format") == _FORMAT else None
            if not isinstance(entries, dict):
                raise ValueError(f"not a tflowrank latency table of format {_FORMAT}")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            if warn:
                warnings.warn(f"tflowrank.search: latency cache {str(self.path)!r} is unreadable "
                              f"({error}); measuring again and overwriting it.", stacklevel=5)
            return {}
        return {k: v for k, v in entries.items()
                if isinstance(v, dict) and _is_latency(v.get("us"))}

    def _write(self):
        from ._io import write_bytes_atomic

        entries = {**self._read(warn=False), **self._entries}  # keep what others added meanwhile
        data = {"format": _FORMAT, "about": "tflowrank latency table: microseconds per op chain",
                "entries": entries}
        write_bytes_atomic(self.path, json.dumps(data, indent=1, sort_keys=True).encode())

    # -- measuring ------------------------------------------------------------------------------
    def _measure(self, missing, progress):
        report = _reporter(progress)
        with tempfile.TemporaryDirectory(prefix="tflowrank-latency-") as folder:
            folder = Path(folder)
            files = self._export(list(missing.values()), folder, report)
            rounds = dict(zip(missing, _time([str(files[key]) for key in missing],
                                             self.profile_options, report)))
            report(None)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        settings = self.settings()
        return {key: {"us": float(np.median(rounds[key])), "rounds_us": rounds[key],
                      "what": item.describe(), "dtype": self.dtype,
                      "runner": settings["profile"]["runner"], "measured": stamp}
                for key, item in missing.items()}

    def _export(self, items, folder, report):
        """``{key: .tflite path}``: chains converted in child processes, the model here."""
        from .export import export_tflite

        files, chains = {}, []
        for item in items:
            key = self._key(item)
            path = folder / f"item{len(files)}.tflite"
            files[key] = path
            if isinstance(item, Chain):
                chains.append((path.name, item))
            else:
                report(f"converting {item.describe()}")
                export_tflite(item.model, path, quantize="int8" if self.dtype == "int8" else None,
                              representative_data=_whole_model_inputs(item) if self.dtype == "int8" else None)
        for start in range(0, len(chains), _JOBS_PER_WORKER):
            batch = chains[start:start + _JOBS_PER_WORKER]
            _run_worker([item.job(name, self.dtype) for name, item in batch], folder,
                        lambda done, s=start: report(f"converting op chains {s + done}/{len(chains)}"))
        return files


def _is_latency(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and value > 0


def _whole_model_inputs(item):
    shape = tuple(item.model.inputs[0].shape[1:])
    data = item.representative_data
    if data is None:
        return np.random.default_rng(0).uniform(0, 1, (_WHOLE_MODEL_SAMPLES, *shape)).astype("float32")
    return np.asarray(data)[:_WHOLE_MODEL_SAMPLES]


def check_profile_options(options):
    """``options`` with the defaults filled in; a ValueError / TypeError naming a bad one."""
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise TypeError("`profile_options` must be a dict of tflowrank.profile arguments. "
                        f"Received: profile_options={options!r}")
    unknown = [k for k in options if k not in _PROFILE_KEYS]
    if unknown:
        raise ValueError(f"`profile_options` has unknown or unsupported keys {unknown}: expected "
                         f"some of {', '.join(_PROFILE_KEYS)}. Received: profile_options={options!r}")
    options = {**_PROFILE_DEFAULTS, **options}
    if options["target"] not in ("host", "android"):
        raise ValueError("profile_options['target'] must be 'host' or 'android' (TFLite Micro "
                         f"measures no latency). Received: target={options['target']!r}")
    for name, minimum in (("threads", 1), ("runs", 1), ("warmup_runs", 0)):
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"profile_options['{name}'] must be an integer >= {minimum}. "
                             f"Received: {name}={value!r}")
    if options["target"] == "android" and options.get("benchmark_binary") in (None, False):
        raise ValueError("profile_options with target='android' needs 'benchmark_binary': the "
                         "Android build of benchmark_model. Received: "
                         f"benchmark_binary={options.get('benchmark_binary')!r}")
    return options


def _runner(options):
    """What times the models: it is part of every key."""
    if options["target"] == "android":
        return f"benchmark_model-android:{Path(options['benchmark_binary']).name}"
    if options.get("benchmark_binary") is False:
        return "litert-python"
    from .benchmark_tool import find_benchmark_binary

    binary = find_benchmark_binary(options.get("benchmark_binary"))
    return "litert-python" if binary is None else f"benchmark_model:{Path(binary).resolve()}"


def machine_id():
    """This host and the versions that shape the exported graph and run it."""
    from importlib import metadata

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"node": platform.node(), "machine": platform.machine(), "cpu": cpu,
            "tensorflow": version("tensorflow"), "ai-edge-litert": version("ai-edge-litert")}


def _reporter(progress):
    if not progress:
        return lambda message: None
    started = time.monotonic()

    def report(message):
        if message is None:
            sys.stderr.write("\n")
        else:
            seconds = int(time.monotonic() - started)
            sys.stderr.write(f"\rsearch latency {seconds // 60:02d}:{seconds % 60:02d} {message[:60]:<60}")
        sys.stderr.flush()

    return report


def _time(paths, options, report):
    """Each round's latency of each of ``paths`` (``[[us, ...], ...]``, ``_ROUNDS`` each): the
    median of ``runs`` invocations, timed with ``tflowrank.profile(paths, repeats=_ROUNDS, **options)``."""
    from .profiling import profile

    def progress(index, total, path, result):
        if result is not None:
            report(f"timing {len(paths)} models x {_ROUNDS} rounds: {index}/{total}")

    return [list(r.repeat_medians_us) for r in profile(paths, repeats=_ROUNDS, progress=progress, **options)]


# -- the child process that converts --------------------------------------------------------------

def _run_worker(jobs, folder, on_done=None):
    """Convert ``jobs`` (``(spec, weights)`` pairs) to .tflite files in ``folder`` in a child
    (``_worker``); ``ToolError`` with its output if it fails."""
    from ._io import child_env
    from .errors import ToolError

    folder = Path(folder)
    spec = folder / f"spec{time.monotonic_ns()}.json"
    arrays = {}
    for index, (job, weights) in enumerate(jobs):
        job["weights"] = None if weights is None else len(weights)
        for position, value in enumerate(weights or ()):
            arrays[f"{index}_{position}"] = value
    np.savez(spec.with_suffix(".npz"), **arrays)
    spec.write_text(json.dumps([job for job, _ in jobs]))
    env = child_env(TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-m", "tflowrank.latency_table", str(spec)]
    log = spec.with_suffix(".log")
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        lines = []
        for line in process.stdout:
            if line.startswith(_WORKER_TAG):
                if on_done is not None:
                    on_done(int(line.split()[-1]))
            else:
                lines.append(line)
        code = process.wait()
    if code != 0:
        tail = "".join(lines[-10:]) + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise ToolError(f"Converting op chains for cost='latency' failed (exit code {code}).", command, tail)


def _worker(spec):
    """The child: build each one-layer model of ``spec`` and export it (see ``_run_worker``)."""
    import keras

    import tflowrank.layers  # noqa: F401  registers the factorized layers
    from tflowrank.export import export_tflite

    spec = Path(spec)
    jobs = json.loads(spec.read_text())
    with np.load(spec.with_suffix(".npz")) as arrays:
        weights = {name: arrays[name] for name in arrays.files}
    rng = np.random.default_rng(0)
    for index, job in enumerate(jobs):
        layer = keras.saving.deserialize_keras_object(job["layer"])
        inputs = keras.Input(batch_shape=tuple(job["input_shape"]))
        model = keras.Model(inputs, layer(inputs))
        if job["weights"] is not None:
            layer.set_weights([weights[f"{index}_{p}"] for p in range(job["weights"])])
        int8 = job["dtype"] == "int8"
        samples = rng.uniform(-1, 1, (_CALIBRATION_SAMPLES, *job["input_shape"][1:])).astype("float32")
        export_tflite(model, spec.parent / job["file"], quantize="int8" if int8 else None,
                      representative_data=samples if int8 else None, int8_io=int8)
        print(f"{_WORKER_TAG} {index + 1}", flush=True)


# -- what search reads --------------------------------------------------------------------------

class LayerLatencies:
    """The whole model's latency, each candidate layer's own, and its chains' at any rank.

    ``points[(path, chain class)]`` holds the measured ``{rank: us}`` of each chain. At a rank
    that was not measured, the latency is interpolated linearly in MACs between the measured
    ranks of that chain (after a monotone fit: a chain costing more MACs never runs faster);
    above the largest measured rank it is ``inf`` (not a candidate), below the smallest it is
    the smallest measured value. ``measured()`` is a view that answers measured ranks only (the
    others cost ``inf``); ``refine`` measures more ranks.
    """

    def __init__(self, total, originals, points):
        self.total = float(total)
        self.originals = dict(originals)
        self.points = {key: dict(values) for key, values in points.items()}
        self._curves = {}
        self._measured_only = False

    @property
    def fixed(self):
        """What the candidate layers do not account for: pooling, heads, layers left out, the
        runtime's own cost."""
        return self.total - sum(self.originals.values())

    def original(self, path):
        return self.originals[path]

    def measured(self):
        """A view of this table (sharing its points) in which only measured ranks have a cost."""
        view = copy.copy(self)
        view._measured_only = True
        return view

    def chain(self, call, cls, rank):
        key = (call.path, cls)
        if self._measured_only:
            return self.points[key].get(cls.normalize_rank(rank), math.inf)
        if key not in self._curves:
            from .selection import monotone_fit

            ranks = list(self.points[key])
            self._curves[key] = monotone_fit(
                [cls.macs_for(call.layer, r, call.input_shape) for r in ranks],
                [self.points[key][r] for r in ranks])
        macs, latency = self._curves[key]
        at = cls.macs_for(call.layer, rank, call.input_shape)
        if at > macs[-1] * (1 + 1e-9):
            return math.inf
        return float(np.interp(at, macs, latency))

    def refine(self, table, chosen, multiple_of=1, progress=False):
        """Measure on ``table``, for each ``(call, chain class, rank)`` of ``chosen``, that rank
        and its ``neighbours`` not measured yet; return how many were."""
        new = []
        for call, cls, rank in chosen:
            for near in neighbours(call, cls, rank, multiple_of):
                if near not in self.points[(call.path, cls)] and (call, cls, near) not in new:
                    new.append((call, cls, near))
        if new:
            values = table.lookup([Chain(call.layer, call.input_shape, cls, rank)
                                   for call, cls, rank in new], progress=progress)
            for (call, cls, rank), value in zip(new, values):
                self.points[(call.path, cls)][rank] = value
                self._curves.pop((call.path, cls), None)
        return len(new)


def neighbours(call, cls, rank, multiple_of=1):
    """``rank`` and the ranks a plan could take instead whose MACs are nearest to
    ``_NEIGHBOURHOOD`` times its own (ranks rounded to ``multiple_of``, costing fewer MACs than
    the layer)."""
    from .costs import layer_macs
    from .ranks import round_rank

    def macs(r):
        return cls.macs_for(call.layer, r, call.input_shape)

    cin = call.input_shape[-1]
    full = cls.full_rank_of(call.layer, cin)
    original = layer_macs(call.layer, call.input_shapes, call.output_shapes)
    options = [r for r in dict.fromkeys(round_rank(r, multiple_of, full)
                                        for r in cls.rank_candidates(call.layer, cin))
               if macs(r) < original]
    rank = cls.normalize_rank(rank)
    centre = macs(rank)
    found = [rank]
    for factor in _NEIGHBOURHOOD:
        if options:
            found.append(min(options, key=lambda r: abs(macs(r) - factor * centre)))
    return list(dict.fromkeys(found))


def latency_ranks(call, cls, ranks, points=_POINTS):
    """The ranks of ``cls`` measured for ``call``: at most ``points`` of ``ranks`` (spread from the
    cheapest to the dearest), and the largest rank that costs fewer MACs than the layer."""
    from .costs import layer_macs

    def macs(rank):
        return cls.macs_for(call.layer, rank, call.input_shape)

    original = layer_macs(call.layer, call.input_shapes, call.output_shapes)
    given = sorted(dict.fromkeys(cls.normalize_rank(r) for r in ranks), key=macs)
    if len(given) > points:
        given = [given[i] for i in dict.fromkeys(np.linspace(0, len(given) - 1, points).round().astype(int))]
    cheaper = [r for r in cls.rank_candidates(call.layer, call.input_shape[-1]) if macs(r) < original]
    return list(dict.fromkeys(given + cheaper[-1:]))


def layer_latencies(table, model, layers, representative_data=None, progress=False):
    """Measure (or read) what ``search`` needs on ``table``: the whole model, each layer itself
    and each chain at the ranks ``latency_ranks`` picks.

    Args:
        table: a ``LatencyTable``.
        model: the whole model.
        layers: ``[(LayerCall, {chain class: [ranks]}), ...]``, the candidate layers.
        representative_data: inputs calibrating the whole model's int8 export.

    Returns:
        LayerLatencies.
    """
    items = [WholeModel(model, representative_data)]
    where = []  # per layer: its path, the index of the layer itself, per chain its ranks and indices
    for call, chains in layers:
        items.append(Chain(call.layer, call.input_shape))
        own, measured = len(items) - 1, []
        for cls, ranks in chains.items():
            picked = latency_ranks(call, cls, ranks)
            measured.append((cls, picked, range(len(items), len(items) + len(picked))))
            items.extend(Chain(call.layer, call.input_shape, cls, r) for r in picked)
        where.append((call, own, measured))
    values = table.lookup(items, progress=progress)
    originals, points = {}, {}
    for call, own, measured in where:
        originals[call.path] = values[own]
        for cls, picked, indices in measured:
            points[(call.path, cls)] = {r: values[i] for r, i in zip(picked, indices)}
    return LayerLatencies(values[0], originals, points)


if __name__ == "__main__":
    _worker(sys.argv[1])
