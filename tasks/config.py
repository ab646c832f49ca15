"""Load and validate pipeline.toml and toolchains/*.toml into dataclasses.

Every error names the file and the key, and says how to fix it. Nothing here imports TVM, so
`doit list` works before anything heavy is installed.
"""

from __future__ import annotations

import difflib
import re
import functools
import math
import tomllib
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Iterator

from tasks.errors import CrtforgeError
from tasks.naming import MAX_NAME, c_identifier, is_valid_name, prefix_clash_key

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TOOLCHAIN_DIR = PROJECT_ROOT / "toolchains"
BOARD_DIR = PROJECT_ROOT / "boards"

BACKENDS = ("c", "llvm")
# release: fused kernels (FuseOps/FuseTIR), TVM's argument checks off, the toolchain's release flags.
# debug: one kernel per op, every check kept, the toolchain's debug flags.
PROFILES = ("release", "debug")
# A board's kind decides how its programs run and how they are linked.
BOARD_RUNNERS = {"host": "native", "linux": "qemu-user", "bare-metal": "qemu-system"}
# External codegens a target may offload to (tasks/compile/offload.py), and the op families each takes: an
# `offload` entry is a codegen (all its ops) or `codegen.op` (that family only).
OFFLOAD_CODEGENS = {"crtforge_dense": ("dense", "conv2d")}
OFFLOAD_CHOICES = (*OFFLOAD_CODEGENS, *(f"{c}.{op}" for c, ops in OFFLOAD_CODEGENS.items() for op in ops))
MODEL_SUFFIXES = (".onnx", ".tflite")
# What a model's outputs are compared with when it has no `expected`: "auto" is an implementation independent of
# TVM (onnxruntime for ONNX, TFLM's interpreter for TFLite); "tvm" is TVM's own Relax VM, a second opinion.
REFERENCES = ("auto", "onnxruntime", "tflm", "tvm")
REFERENCE_FORMATS = {"onnxruntime": ".onnx", "tflm": ".tflite"}


# The stages whose tasks read settings (tasks/pair.py's Stage names, and the benchmarks).
STAGES = ("import", "reference", "tune", "build", "classify", "codegen", "link", "run", "compare", "bench")


def read_by(*stages: str, default: Any = MISSING) -> Any:
    """A dataclass field that only these stages read: only their tasks rerun when it changes. A field without
    it is read by every stage, so a new field can never escape a task's up-to-date check. A stage name that is
    not in STAGES would silently exclude the field from that stage's check: it fails here, at import."""
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"read_by: unknown stage(s) {sorted(unknown)}; stages are {STAGES}")
    return field(default=default, metadata={"stages": stages})


def settings(obj: Any, *stages: str) -> Any:
    """The settings of `obj` (a config dataclass, recursively) that any of `stages` reads, as plain data for
    doit's config_changed."""
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"settings: unknown stage(s) {sorted(unknown)}; stages are {STAGES}")
    if is_dataclass(obj):
        return {f.name: settings(getattr(obj, f.name), *stages) for f in fields(obj)
                if set(stages) & set(f.metadata.get("stages", stages))}
    if isinstance(obj, (list, tuple)):
        return [settings(x, *stages) for x in obj]
    if isinstance(obj, dict):
        return {str(k): settings(v, *stages) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


class ConfigError(CrtforgeError):
    """A bad pipeline or toolchain file: `file: key: problem. HINT: fix`."""

    def __init__(self, file: Path | str, key: str, problem: str, hint: str = ""):
        super().__init__(problem, file, key, hint)


@dataclass(frozen=True)
class Toolchain:
    name: str
    file: Path
    description: str = read_by()
    cc: str
    ar: str
    cflags: tuple[str, ...]
    ldflags: tuple[str, ...]
    libs: tuple[str, ...]
    debian_package: str
    profile_cflags: dict[str, tuple[str, ...]]  # "release"/"debug" → optimisation flags
    # release only: flags after the profile's for crt/'s kernels (int8.c, dense.c), e.g. -O2 where the rest is -Os
    kernel_cflags: tuple[str, ...] = ()
    # GNU objdump for the target's programs, for the worst-case stack on bare-metal boards; "" when the toolchain
    # names none and its cc is not a GCC whose objdump sits beside it
    objdump: str = ""


@dataclass(frozen=True)
class Memory:
    """A bare-metal board's memory map, and what the program reserves of its RAM."""
    flash_origin: int
    flash_size: int
    ram_origin: int
    ram_size: int
    stack_size: int
    heap_size: int
    regions: tuple["Region", ...] = ()  # its other memories, which a target's `placement` may name

    def region(self, name: str) -> "Region | None":
        return next((r for r in self.regions if r.name == name), None)


@dataclass(frozen=True)
class Region:
    """A memory of a bare-metal board besides its flash and RAM: external RAM, TCM, block RAM."""
    name: str
    origin: int
    size: int
    # The program loader (qemu's -kernel, a debugger) writes its contents, so read-only data may live there; a
    # memory that holds nothing at reset may only hold zeroed data (the arena).
    loaded: bool


# What a target may place in a named memory (placement = {weights = "...", arena = "..."}): the input sections,
# named per model (naming.ModelSymbols), and whether they hold bytes to load or only zeros.
PLACEABLE = {"weights": (".rodata.crtforge.*.weights", False), "arena": (".bss.crtforge.*.arena", True)}
DEFAULT_PLACEMENT = {"weights": "flash", "arena": "ram"}


ARM_DSP_CPUS = frozenset({"cortex-m4", "cortex-m7", "cortex-m33", "cortex-m35p", "cortex-m55", "cortex-m85"})


@dataclass(frozen=True)
class Board:
    name: str
    file: Path
    description: str = read_by()
    kind: str  # "host", "linux" or "bare-metal"
    triple: str  # LLVM target triple ("" on the host: TVM's default)
    cpu: str  # TVM's mcpu ("" when not stated)
    cflags: tuple[str, ...] = read_by("link", "bench")  # CPU and ABI flags every compile and link uses
    ldflags: tuple[str, ...] = read_by("link", "bench")
    run: tuple[str, ...] = read_by("run", "bench")  # argv; "{program}" stands for the linked program
    debian_package: str = read_by("run", "bench")  # provides run[0]
    memory: Memory | None = read_by("link", "bench")  # bare-metal only
    mattr: tuple[str, ...] = read_by("build", default=())  # LLVM target features for TVM's codegen
    # host boards: CPU features (/proc/cpuinfo flags) the programs need; a run on a machine without them refuses
    cpu_flags: tuple[str, ...] = read_by("run", "bench", default=())

    @property
    def runner(self) -> str:
        return BOARD_RUNNERS[self.kind]

    @property
    def arm_dsp(self) -> bool:
        """An Armv7E-M/v8-M core with the DSP extension (SMLAD, SXTB16): crt's int8 kernels take their DSP path
        there (__ARM_FEATURE_DSP), and the build widens small layers' weights for it."""
        return self.cpu in ARM_DSP_CPUS


@dataclass(frozen=True)
class ModelConfig:
    name: str
    prefix: str  # C prefix of every symbol generated for this model
    source: Path
    inputs: Path | None = read_by("reference")
    expected: Path | None = read_by("reference")
    rtol: float = read_by("compare")
    atol: float = read_by("compare")
    reference: str = read_by("reference", default="auto")  # one of REFERENCES

    @property
    def format(self) -> str:
        return self.source.suffix.lstrip(".")

    def import_files(self) -> list[Path]:
        """What importing the model reads: the model file and the ONNX external data it names."""
        return [self.source, *external_data_files(self.source)]

    def files(self) -> list[Path]:
        """Every file the model reads: its source, ONNX external data, inputs and expected outputs."""
        files = self.import_files()
        if self.inputs:
            files.append(self.inputs)
        if self.expected:
            files.extend(sorted(self.expected.rglob("*.pb")) if self.expected.is_dir() else [self.expected])
        return files


def external_data_files(source: Path) -> list[Path]:
    """The files an ONNX model keeps its tensors in (onnx's save_as_external_data), from the model's own
    records: a changed weights file must rebuild the model like a changed model file."""
    if source.suffix != ".onnx":
        return []
    try:
        stat = source.stat()
    except OSError:
        return []
    # Every task of every pair asks at load; the file's version is the cache key, so an edit is seen.
    return list(_external_data_files(source, stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=None)
def _external_data_files(source: Path, mtime_ns: int, size: int) -> tuple[Path, ...]:
    try:
        import onnx

        model = onnx.load(str(source), load_external_data=False)
    except Exception:  # onnx not installed yet, or not a valid model: the import stage says which
        return ()
    locations = set()
    for tensor in _onnx_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            locations.update(e.value for e in tensor.external_data if e.key == "location")
    return tuple(source.parent / loc for loc in sorted(locations))


def _onnx_tensors(graph) -> Iterator[Any]:
    """Initializers and constant attributes of a graph and its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _onnx_tensors(sub)


@dataclass(frozen=True)
class Tune:
    """A target's `tune` table: MetaSchedule's search over the pair's TVM kernels (tasks/compile/tune.py)."""
    trials: int  # candidate schedules measured in all, shared among the model's kernels
    seed: int = 0
    per_batch: int = 16  # candidates measured per round (MetaSchedule's num_trials_per_iter)


TUNE_KEYS = {"trials": int, "seed": int, "batch": int}


@dataclass(frozen=True)
class Budget:
    """A target's `budget` table: the most flash and RAM (data + bss) its linked program may take, in bytes."""
    flash: int | None = None
    ram: int | None = None


BUDGET_KEYS = {"flash": (int, str), "ram": (int, str)}
_SIZE = re.compile(r"^\s*(\d+)\s*(?:([KM])i?B?|B)?\s*$", re.I)  # 512, 512B, 512K, 512KB, 512KiB; M alike
_UNIT_BYTES = {"K": 1024, "M": 1024 * 1024}


@dataclass(frozen=True)
class TargetConfig:
    name: str
    backend: str
    toolchain: Toolchain = read_by("link", "bench")
    board: Board
    tvm: dict[str, Any] = read_by("build", "codegen")  # extra TVM target attributes, e.g. {"mfloat-abi": "hard"}
    models: tuple[str, ...] = read_by()  # which pairs exist, not how one is built
    timeout: float = read_by("run", "bench")  # seconds one run of the test program may take
    # external codegens (tasks/compile/offload.py) the build partitions for
    offload: tuple[str, ...] = read_by("build", "codegen", "link", default=())
    profile: str = read_by("build", "link", "bench", default="release")
    # (what, board memory) for the weights and the arena: DEFAULT_PLACEMENT, or the target's `placement`
    placement: tuple[tuple[str, str], ...] = read_by("link", default=tuple(DEFAULT_PLACEMENT.items()))
    # MetaSchedule tuning of the TVM kernels; the build applies the records, so it reruns when this changes
    tune: Tune | None = read_by("tune", "build", default=None)
    budget: Budget = read_by("link", default=Budget())  # checked when the program is linked

    @property
    def runner(self) -> str:
        return self.board.runner

    def tvm_target(self) -> dict[str, Any]:
        """The TVM target as the JSON dict that tvm.target.Target accepts: for the llvm backend the
        board's triple and CPU, then the target's own `tvm` options."""
        return tvm_target(self.backend, self.board, self.tvm)

    def cflags(self, kernel: bool = False) -> list[str]:
        """Compile flags: the toolchain's, its flags for the profile (and, for crt's kernels in release, its
        kernel_cflags), then the board's CPU and ABI flags."""
        extra = self.toolchain.kernel_cflags if kernel and self.profile == "release" else ()
        flags = (*self.toolchain.cflags, *self.toolchain.profile_cflags[self.profile], *extra, *self.board.cflags)
        return [f.replace("{triple}", self.board.triple) for f in flags]

    def ldflags(self) -> list[str]:
        return [f.replace("{triple}", self.board.triple) for f in (*self.toolchain.ldflags, *self.board.ldflags)]


def tvm_target(backend: str, board: Board, options: dict[str, Any]) -> dict[str, Any]:
    target: dict[str, Any] = {"kind": backend}
    if backend == "llvm":
        if board.triple:
            target["mtriple"] = board.triple
        if board.cpu:
            target["mcpu"] = board.cpu
        if board.mattr:
            target["mattr"] = list(board.mattr)
    return {**target, **options}


def _flag_values(flags: list[str], prefix: str) -> set[str]:
    return {f[len(prefix):] for f in flags if f.startswith(prefix)}


def tvm_float_abi(target: dict[str, Any]) -> str | None:
    """'hard' or 'soft' calling convention of code TVM's LLVM generates for `target`; None off Arm."""
    triple = str(target.get("mtriple", ""))
    if not triple.startswith(("arm", "thumb")):
        return None
    if "mfloat-abi" in target:
        return "hard" if target["mfloat-abi"] == "hard" else "soft"
    return "hard" if triple.endswith("hf") else "soft"


@dataclass(frozen=True)
class FirmwareConfig:
    """A [firmware.NAME] table: models linked into one library per target (tasks/firmware.py), with one registry
    and one arena that they share, since they run in turn."""
    name: str
    prefix: str  # C prefix of the firmware's own symbols: its arena, header and library
    models: tuple[str, ...]
    targets: tuple[str, ...]
    budget: Budget = Budget()


@dataclass(frozen=True)
class Pipeline:
    file: Path
    out: Path
    models: dict[str, ModelConfig]
    targets: dict[str, TargetConfig]
    toolchains: dict[str, Toolchain] = field(default_factory=dict)
    boards: dict[str, Board] = field(default_factory=dict)
    firmware: dict[str, FirmwareConfig] = field(default_factory=dict)

    def firmware_builds(self) -> list[tuple[FirmwareConfig, TargetConfig]]:
        """Every (firmware, target) to build, in file order."""
        return [(fw, self.targets[t]) for fw in self.firmware.values() for t in fw.targets]

    def pairs(self) -> list[tuple[ModelConfig, TargetConfig]]:
        """Every (model, target) pair to build, in file order."""
        return [(self.models[m], t) for t in self.targets.values() for m in t.models]


# --- reading -----------------------------------------------------------------------------------------

def _read_toml(path: Path, key: str, what: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, key, f"{what} not found.", f"create {path.name} or pass pipeline=PATH") from None
    except IsADirectoryError:
        raise ConfigError(path, key, f"{what} is a folder, not a file.",
                          "pass the TOML file itself, e.g. pipeline=FOLDER/pipeline.toml") from None
    except UnicodeDecodeError as e:
        raise ConfigError(path, key, f"{what} is not UTF-8 text (byte {e.start}: {e.reason}).",
                          "TOML files are UTF-8; save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(path, key, f"{what} cannot be read: {e.strerror}.") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, key, f"TOML syntax error: {e}.", "fix the line it names") from None


def _check_keys(file: Path, key: str, table: dict[str, Any], allowed: dict[str, type | tuple[type, ...]],
                required: tuple[str, ...] = ()) -> None:
    for k, v in table.items():
        if k not in allowed:
            near = difflib.get_close_matches(k, list(allowed), n=1)
            hint = f"did you mean '{near[0]}'?" if near else f"allowed keys: {', '.join(sorted(allowed))}"
            raise ConfigError(file, f"{key}.{k}" if key else k, "unknown key.", hint)
        want = allowed[k]
        # bool is an int in Python; a number key must not accept true/false.
        if isinstance(v, bool) and bool not in (want if isinstance(want, tuple) else (want,)):
            raise ConfigError(file, f"{key}.{k}" if key else k, f"expected {_type_name(want)}, got a boolean.")
        if not isinstance(v, want):
            raise ConfigError(file, f"{key}.{k}" if key else k,
                              f"expected {_type_name(want)}, got {type(v).__name__} {v!r}.")
    for k in required:
        if k not in table:
            raise ConfigError(file, f"{key}.{k}" if key else k, "missing required key.")


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "a table", bool: "a boolean"}
    ts = t if isinstance(t, tuple) else (t,)
    if set(ts) == {int, float}:
        return "a number"
    return " or ".join(names.get(x, x.__name__) for x in ts)


def _check_string_lists(file: Path, data: dict[str, Any], keys: tuple[str, ...]) -> None:
    for k in keys:
        if not all(isinstance(x, str) for x in data.get(k, [])):
            raise ConfigError(file, k, "expected a list of strings.")


def _check_name_list(file: Path, key: str, names: list[Any], known: dict[str, Any], what: str) -> None:
    """A list of names of models or targets: each one defined (else the nearest is suggested), none twice."""
    for i, name in enumerate(names):
        if not isinstance(name, str) or name not in known:
            near = difflib.get_close_matches(str(name), list(known), n=1)
            raise ConfigError(file, f"{key}[{i}]", f"unknown {what} {name!r}.",
                              f"did you mean '{near[0]}'?" if near else f"define [{what}s.{name}] first")
        if name in names[:i]:
            raise ConfigError(file, f"{key}[{i}]", f"{what} '{name}' is listed twice.", f"list each {what} once")


def _existing_path(file: Path, key: str, value: str, what: str) -> Path:
    path = (file.parent / value).resolve()
    if not path.exists():
        raise ConfigError(file, key, f"{what} '{value}' not found (looked at {path}).",
                          "paths are relative to the pipeline file; fix the path or add the file")
    return path


def load_toolchain(name: str, toolchain_dir: Path | tuple[Path, ...] = TOOLCHAIN_DIR) -> Toolchain:
    path = _file_in(toolchain_dir, name)
    data = _read_toml(path, "", "toolchain file")
    _check_keys(path, "", data, {"description": str, "cc": str, "ar": str, "cflags": list, "ldflags": list,
                                  "libs": list, "debian_package": str, "release_cflags": list, "debug_cflags": list,
                                  "kernel_cflags": list, "objdump": str},
                required=("cc", "ar", "debian_package"))
    _check_string_lists(path, data, ("cflags", "ldflags", "libs", "release_cflags", "debug_cflags", "kernel_cflags"))
    return Toolchain(name=name, file=path, description=data.get("description", ""), cc=data["cc"], ar=data["ar"],
                     cflags=tuple(data.get("cflags", [])), ldflags=tuple(data.get("ldflags", [])),
                     libs=tuple(data.get("libs", [])), debian_package=data["debian_package"],
                     profile_cflags={p: tuple(data.get(f"{p}_cflags", [])) for p in PROFILES},
                     kernel_cflags=tuple(data.get("kernel_cflags", [])),
                     objdump=data.get("objdump", _objdump_of(data["cc"])))


def _objdump_of(cc: str) -> str:
    """A GCC's objdump: arm-none-eabi-gcc -> arm-none-eabi-objdump."""
    return cc.removesuffix("gcc") + "objdump" if cc.endswith("gcc") else ""


def _dirs(directory: Path | tuple[Path, ...]) -> tuple[Path, ...]:
    return directory if isinstance(directory, tuple) else (directory,)


def _known(directory: Path | tuple[Path, ...]) -> list[str]:
    return sorted({p.stem for d in _dirs(directory) for p in d.glob("*.toml")})


def _file_in(directory: Path | tuple[Path, ...], name: str) -> Path:
    """<name>.toml from the first folder that has it (the pipeline's own folders come first)."""
    dirs = _dirs(directory)
    return next((d / f"{name}.toml" for d in dirs if (d / f"{name}.toml").is_file()), dirs[-1] / f"{name}.toml")


def load_board(name: str, board_dir: Path | tuple[Path, ...] = BOARD_DIR) -> Board:
    path = _file_in(board_dir, name)
    data = _read_toml(path, "", "board file")
    _check_keys(path, "", data, {"description": str, "kind": str, "triple": str, "cpu": str, "mattr": list,
                                  "cflags": list, "cpu_flags": list,
                                  "ldflags": list, "run": list, "debian_package": str, "memory": dict},
                required=("kind", "run", "debian_package"))
    if data["kind"] not in BOARD_RUNNERS:
        raise ConfigError(path, "kind", f"unknown board kind '{data['kind']}'.",
                          f"use one of: {', '.join(BOARD_RUNNERS)}")
    _check_string_lists(path, data, ("mattr", "cflags", "cpu_flags", "ldflags", "run"))
    if data.get("cpu_flags") and data["kind"] != "host":
        raise ConfigError(path, "cpu_flags", "only a host board runs programs on this machine's CPU.",
                          "remove cpu_flags, or set kind = \"host\"")
    if "{program}" not in data["run"]:
        raise ConfigError(path, "run", "the command must contain \"{program}\", the program to run.")
    memory = None
    if data["kind"] == "bare-metal":
        if "memory" not in data:
            raise ConfigError(path, "memory", "a bare-metal board needs its memory map.",
                              "add [memory] with flash_origin, flash_size, ram_origin, ram_size, stack_size, "
                              "heap_size")
        keys = ("flash_origin", "flash_size", "ram_origin", "ram_size", "stack_size", "heap_size")
        _check_keys(path, "memory", data["memory"], {**{k: int for k in keys}, "regions": dict}, required=keys)
        fields = {k: v for k, v in data["memory"].items() if k != "regions"}
        memory = Memory(**fields, regions=_load_regions(path, data["memory"].get("regions", {})))
    return Board(name=name, file=path, description=data.get("description", ""), kind=data["kind"],
                 triple=data.get("triple", ""), cpu=data.get("cpu", ""), mattr=tuple(data.get("mattr", [])),
                 cpu_flags=tuple(data.get("cpu_flags", [])),
                 cflags=tuple(data.get("cflags", [])),
                 ldflags=tuple(data.get("ldflags", [])), run=tuple(data["run"]),
                 debian_package=data["debian_package"], memory=memory)


def _load_regions(path: Path, tables: dict[str, Any]) -> tuple[Region, ...]:
    regions = []
    for name, table in tables.items():
        key = f"memory.regions.{name}"
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name in DEFAULT_PLACEMENT.values():
            raise ConfigError(path, key, "a region's name must be lower-case letters, digits and '_', and not "
                              "'flash' or 'ram' (the board's own).", "rename the table")
        if not isinstance(table, dict):
            raise ConfigError(path, key, "expected a table.", f"write it as [{key}]")
        _check_keys(path, key, table, {"origin": int, "size": int, "loaded": bool}, required=("origin", "size"))
        if table["size"] <= 0 or table["origin"] < 0:
            raise ConfigError(path, key, "origin must be >= 0 and size > 0.")
        regions.append(Region(name, table["origin"], table["size"], table.get("loaded", False)))
    return tuple(regions)


def _load_placement(file: Path, key: str, table: dict[str, Any], board: Board) -> tuple[tuple[str, str], ...]:
    """targets.NAME.placement: which memory of the board holds the weights and the arena."""
    _check_keys(file, key, table, {k: str for k in PLACEABLE})
    placement = {**DEFAULT_PLACEMENT, **table}
    names = [*DEFAULT_PLACEMENT.values(), *(r.name for r in (board.memory.regions if board.memory else ()))]
    for what, region_name in table.items():
        if board.memory is None:
            raise ConfigError(file, f"{key}.{what}", f"board '{board.name}' has no memory map to place into.",
                              f"remove {key}, or use a bare-metal board")
        region = board.memory.region(region_name)
        if region_name not in names:
            raise ConfigError(file, f"{key}.{what}", f"board '{board.name}' has no memory '{region_name}'.",
                              f"use one of: {', '.join(names)} (boards/{board.name}.toml [memory.regions])")
        zeroed_only = PLACEABLE[what][1]
        if region is not None and not region.loaded and not zeroed_only:
            raise ConfigError(file, f"{key}.{what}", f"memory '{region_name}' holds nothing at reset (its "
                              "`loaded` is false), and the weights must be there when the program starts.",
                              "place the weights in flash or in a memory the loader writes")
        if what == "arena" and region_name == "flash":
            raise ConfigError(file, f"{key}.arena", "the arena is written at run time: not flash.",
                              "place it in ram or a RAM region")
    return tuple(placement.items())


def _load_named(file: Path, key: str, name: str, what: str, directory: tuple[Path, ...], cache: dict,
                loader) -> Any:
    """A toolchain or board by name, from the first of `directory` with <name>.toml, loaded once per pipeline."""
    if name not in cache:
        known = _known(directory)
        if name not in known:
            near = difflib.get_close_matches(name, known, n=1)
            raise ConfigError(file, key, f"unknown {what} '{name}'.",
                              (f"did you mean '{near[0]}'? " if near else "")
                              + f"{what}s are the files in {' and '.join(map(str, directory))}: {', '.join(known)}")
        cache[name] = loader(name, directory)
    return cache[name]


def _check_abi(file: Path, key: str, target: TargetConfig) -> None:
    """The TVM target, the board and the toolchain must agree on CPU and float ABI: a mix links (lld) or
    fails late (GNU ld), and a silent soft/hard mix passes floats in the wrong registers."""
    flags = target.cflags()
    abis = _flag_values(flags, "-mfloat-abi=")
    compiler_abi = None if not abis else ("hard" if abis == {"hard"} else "soft" if "hard" not in abis else "mixed")
    if compiler_abi == "mixed":
        raise ConfigError(file, key, f"float ABI mismatch: the toolchain and board flags say "
                          f"{', '.join('-mfloat-abi=' + a for a in sorted(abis))}.",
                          f"make {target.toolchain.file.name} and {target.board.file.name} agree")
    if target.backend != "llvm":
        return
    tvm = target.tvm_target()
    tvm_abi = tvm_float_abi(tvm)
    if tvm_abi is not None and compiler_abi is not None and tvm_abi != compiler_abi:
        raise ConfigError(file, f"{key}.tvm", f"float ABI mismatch: TVM generates {tvm_abi}-float calls for "
                          f"{tvm.get('mtriple')} (mfloat-abi {tvm.get('mfloat-abi', 'from the triple')}), the "
                          f"compiler flags say -mfloat-abi={'/'.join(sorted(abis))}.",
                          "set the same float ABI in the target's tvm options and the board's cflags")
    cpus = _flag_values(flags, "-mcpu=")
    if "mcpu" in tvm and cpus and cpus != {tvm["mcpu"]}:
        raise ConfigError(file, f"{key}.tvm", f"CPU mismatch: TVM compiles for mcpu '{tvm['mcpu']}', the compiler "
                          f"flags say -mcpu={'/'.join(sorted(cpus))}.", "state one CPU")


def _load_model(file: Path, name: str, table: Any) -> ModelConfig:
    key = f"models.{name}"
    if not isinstance(table, dict):
        raise ConfigError(file, key, "expected a table.", f"write it as [{key}]")
    _check_keys(file, key, table, {"source": str, "inputs": str, "expected": str,
                                   "rtol": (int, float), "atol": (int, float), "reference": str},
                required=("source",))
    source = _existing_path(file, f"{key}.source", table["source"], "model file")
    if source.suffix not in MODEL_SUFFIXES:
        raise ConfigError(file, f"{key}.source", f"'{table['source']}' is not an .onnx or .tflite file.",
                          "crtforge imports ONNX and TFLite models")
    inputs = _existing_path(file, f"{key}.inputs", table["inputs"], "inputs file") if "inputs" in table else None
    if inputs is not None and inputs.suffix != ".npz":
        raise ConfigError(file, f"{key}.inputs", "expected an .npz file keyed by input name.")
    expected = (_existing_path(file, f"{key}.expected", table["expected"], "expected outputs")
                if "expected" in table else None)
    if expected is not None and not (expected.suffix == ".npz" or expected.is_dir()):
        raise ConfigError(file, f"{key}.expected", "expected an .npz file or an ONNX test_data_set_N directory.")
    for tol in ("rtol", "atol"):
        if tol in table:
            _finite(file, f"{key}.{tol}", table[tol])
            if table[tol] < 0:
                raise ConfigError(file, f"{key}.{tol}", "must not be negative.")
    reference = table.get("reference", "auto")
    if reference not in REFERENCES:
        raise ConfigError(file, f"{key}.reference", f"unknown reference '{reference}'.",
                          f"use one of: {', '.join(REFERENCES)}")
    if reference in REFERENCE_FORMATS and source.suffix != REFERENCE_FORMATS[reference]:
        raise ConfigError(file, f"{key}.reference", f"{reference} runs {REFERENCE_FORMATS[reference]} models, "
                          f"not {source.name}.", "use 'auto' or 'tvm'")
    return ModelConfig(name=name, prefix=c_identifier(name), source=source, inputs=inputs, expected=expected,
                       rtol=float(table.get("rtol", 1e-4)), atol=float(table.get("atol", 1e-5)), reference=reference)


def _finite(file: Path, key: str, value: float) -> None:
    """inf or nan would make a tolerance pass everything and a timeout never fire."""
    if not math.isfinite(value):
        raise ConfigError(file, key, f"must be a finite number, got {value}.")


def _check_name(file: Path, key: str, name: str, what: str) -> None:
    if len(name) > MAX_NAME:
        raise ConfigError(file, key, f"a {what} name has at most {MAX_NAME} characters ({len(name)} given).",
                          "names become folder, file and C identifiers; shorten it")
    if not is_valid_name(name):
        raise ConfigError(file, key, f"a {what} name is a letter, then letters, digits, '_' or '-' "
                          f"(got {name!r}).")


def _load_target(file: Path, name: str, table: Any, models: dict[str, ModelConfig],
                 toolchains: dict[str, Toolchain], boards: dict[str, Board], toolchain_dirs: tuple[Path, ...],
                 board_dirs: tuple[Path, ...]) -> TargetConfig:
    key = f"targets.{name}"
    if not isinstance(table, dict):
        raise ConfigError(file, key, "expected a table.", f"write it as [{key}]")
    _check_keys(file, key, table, {"backend": str, "toolchain": str, "board": str, "runner": str, "tvm": dict,
                                   "models": list, "timeout": (int, float), "offload": list, "profile": str,
                                   "placement": dict, "tune": dict, "budget": dict},
                required=("backend", "toolchain"))
    if table["backend"] not in BACKENDS:
        raise ConfigError(file, f"{key}.backend", f"unknown backend '{table['backend']}'.",
                          f"use one of: {', '.join(BACKENDS)}")
    toolchain = _load_named(file, f"{key}.toolchain", table["toolchain"], "toolchain", toolchain_dirs, toolchains,
                            load_toolchain)
    board = _load_named(file, f"{key}.board", table.get("board", "host"), "board", board_dirs, boards, load_board)
    # `runner` is implied by the board; stated, it must agree (pipelines written before boards state it).
    if "runner" in table and table["runner"] != board.runner:
        raise ConfigError(file, f"{key}.runner", f"board '{board.name}' runs programs with '{board.runner}', "
                          f"not '{table['runner']}'.", f"remove {key}.runner or set it to '{board.runner}'")
    tvm_opts = table.get("tvm", {})
    if "kind" in tvm_opts:
        raise ConfigError(file, f"{key}.tvm.kind", "the TVM target kind comes from 'backend'.",
                          f"remove {key}.tvm.kind and set {key}.backend")
    target_models = table.get("models", list(models))
    _check_name_list(file, f"{key}.models", target_models, models, "model")
    offload = table.get("offload", [])
    for i, codegen in enumerate(offload):
        if codegen not in OFFLOAD_CHOICES:
            raise ConfigError(file, f"{key}.offload[{i}]", f"unknown external codegen or op {codegen!r}.",
                              f"use one of: {', '.join(OFFLOAD_CHOICES)}")
    profile = table.get("profile", "release")
    if profile not in PROFILES:
        raise ConfigError(file, f"{key}.profile", f"unknown profile '{profile}'.", f"use one of: {', '.join(PROFILES)}")
    timeout = float(table.get("timeout", 60))
    _finite(file, f"{key}.timeout", timeout)
    if timeout <= 0:
        raise ConfigError(file, f"{key}.timeout", "must be a positive number of seconds.")
    placement = _load_placement(file, f"{key}.placement", table.get("placement", {}), board)
    tune = _load_tune(file, f"{key}.tune", table["tune"], table["backend"]) if "tune" in table else None
    target = TargetConfig(name=name, backend=table["backend"], toolchain=toolchain, board=board, tvm=dict(tvm_opts),
                          models=tuple(target_models), timeout=timeout, offload=tuple(offload), profile=profile,
                          placement=placement, tune=tune,
                          budget=_load_budget(file, f"{key}.budget", table.get("budget", {})))
    _check_abi(file, key, target)
    return target


def _load_tune(file: Path, key: str, table: dict[str, Any], backend: str) -> Tune:
    _check_keys(file, key, table, TUNE_KEYS, required=("trials",))
    if backend != "llvm":
        raise ConfigError(file, key, f"MetaSchedule tunes TVM's LLVM kernels; backend '{backend}' has no schedule "
                          "rules in TVM.", "set backend = \"llvm\", or remove tune")
    trials, batch = table["trials"], table.get("batch", 16)
    if trials < 1:
        raise ConfigError(file, f"{key}.trials", f"must be at least 1 (got {trials}).",
                          "a few dozen per kernel is typical; remove tune to keep TVM's default schedules")
    if batch < 1:
        raise ConfigError(file, f"{key}.batch", f"must be at least 1 (got {batch}).")
    return Tune(trials=trials, seed=table.get("seed", 0), per_batch=batch)


def _load_budget(file: Path, key: str, table: dict[str, Any]) -> Budget:
    """targets.NAME.budget: {flash = "512K", ram = 131072}; K and M are KiB and MiB."""
    _check_keys(file, key, table, BUDGET_KEYS)
    limits = {}
    for k, v in table.items():
        n = v
        if isinstance(v, str):
            m = _SIZE.match(v)
            if m is None:
                raise ConfigError(file, f"{key}.{k}", f"{v!r} is not a size.",
                                  'write bytes, or KiB/MiB as "512K", "2M"')
            n = int(m.group(1)) * _UNIT_BYTES.get((m.group(2) or "").upper(), 1)
        if n <= 0:
            raise ConfigError(file, f"{key}.{k}", f"must be a positive size (got {v!r}).")
        limits[k] = n
    return Budget(**limits)


def load_pipeline(path: Path | str, toolchain_dir: Path = TOOLCHAIN_DIR, board_dir: Path = BOARD_DIR) -> Pipeline:
    """Read and validate a pipeline file; raise ConfigError naming the file and key on any problem."""
    file = Path(path).resolve()
    data = _read_toml(file, "", "pipeline file")
    _check_keys(file, "", data, {"pipeline": dict, "models": dict, "targets": dict, "firmware": dict},
                required=("models", "targets"))
    settings = data.get("pipeline", {})
    _check_keys(file, "pipeline", settings, {"out": str, "toolchains": str, "boards": str})
    out = (file.parent / settings.get("out", "out")).resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError(file, "pipeline.out", f"'{settings.get('out', 'out')}' is a file, not a folder "
                          f"({out}).", "name a folder for the build outputs")
    # A pipeline may bring its own toolchain and board files: its folders are searched first.
    toolchain_dirs, board_dirs = _dirs(toolchain_dir), _dirs(board_dir)
    if "toolchains" in settings:
        toolchain_dirs = (_existing_path(file, "pipeline.toolchains", settings["toolchains"], "folder"), *toolchain_dirs)
    if "boards" in settings:
        board_dirs = (_existing_path(file, "pipeline.boards", settings["boards"], "folder"), *board_dirs)

    models: dict[str, ModelConfig] = {}
    prefixes: dict[str, str] = {}
    for name, table in data["models"].items():
        _check_name(file, f"models.{name}", name, "model")
        model = _load_model(file, name, table)
        # Macros and include guards use the prefix in upper case: 'dense' and 'Dense' would clash there.
        clash = prefix_clash_key(model.prefix)
        if clash in prefixes:
            other = c_identifier(prefixes[clash])
            what = (f"both give the C prefix '{other}'" if other == model.prefix else
                    f"give the C prefixes '{other}' and '{model.prefix}', which clash in the header's upper-case "
                    f"macros and include guard ({model.prefix.upper()}_ARENA_BYTES)")
            raise ConfigError(file, f"models.{name}", f"models '{prefixes[clash]}' and '{name}' {what}.",
                              "rename one of them")
        prefixes[clash] = name
        models[name] = model
    if not models:
        raise ConfigError(file, "models", "no models defined.", "add a [models.NAME] table with a source")

    toolchains: dict[str, Toolchain] = {}
    boards: dict[str, Board] = {}
    targets: dict[str, TargetConfig] = {}
    for name, table in data["targets"].items():
        _check_name(file, f"targets.{name}", name, "target")
        targets[name] = _load_target(file, name, table, models, toolchains, boards, toolchain_dirs, board_dirs)
    if not targets:
        raise ConfigError(file, "targets", "no targets defined.", "add a [targets.NAME] table")
    firmware = {}
    for name, table in data.get("firmware", {}).items():
        _check_name(file, f"firmware.{name}", name, "firmware")
        firmware[name] = _load_firmware(file, name, table, models, targets, prefixes)
    return Pipeline(file=file, out=out, models=models, targets=targets, toolchains=toolchains, boards=boards,
                    firmware=firmware)


def _load_firmware(file: Path, name: str, table: Any, models: dict[str, ModelConfig],
                   targets: dict[str, TargetConfig], prefixes: dict[str, str]) -> FirmwareConfig:
    key = f"firmware.{name}"
    if not isinstance(table, dict):
        raise ConfigError(file, key, "expected a table.", f"write it as [{key}]")
    _check_keys(file, key, table, {"models": list, "targets": list, "budget": dict}, required=("models",))
    fw_models = table["models"]
    _check_name_list(file, f"{key}.models", fw_models, models, "model")
    if len(fw_models) < 2:
        raise ConfigError(file, f"{key}.models", "a firmware links two or more models.",
                          "for one model, use its pair's library out/<target>/<model>/lib<model>.a")
    if "targets" in table:
        fw_targets = table["targets"]
        _check_name_list(file, f"{key}.targets", fw_targets, targets, "target")
        for i, t in enumerate(fw_targets):
            lacking = [m for m in fw_models if m not in targets[t].models]
            if lacking:
                raise ConfigError(file, f"{key}.targets[{i}]", f"target '{t}' does not build model '{lacking[0]}'.",
                                  f"add it to targets.{t}.models, or remove '{t}' from {key}.targets")
    else:  # every target that builds all of them
        fw_targets = [t for t, tc in targets.items() if all(m in tc.models for m in fw_models)]
        if not fw_targets:
            raise ConfigError(file, f"{key}.models", "no target builds all of these models.",
                              f"list the targets in {key}.targets and add the models to theirs")
    prefix = c_identifier(name)
    clash = prefix_clash_key(prefix)
    if clash in prefixes:
        raise ConfigError(file, key, f"firmware '{name}' and model '{prefixes[clash]}' give the same C prefix "
                          f"('{prefix}' ignoring case): their symbols and macros would clash.", "rename one of them")
    prefixes[clash] = name
    return FirmwareConfig(name=name, prefix=prefix, models=tuple(fw_models), targets=tuple(fw_targets),
                          budget=_load_budget(file, f"{key}.budget", table.get("budget", {})))
