"""Load and validate pipeline.toml and toolchains/*.toml into dataclasses.

Every error names the file and the key, and says how to fix it. Nothing here imports TVM, so
`doit list` works before anything heavy is installed.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.naming import c_identifier, is_valid_name

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TOOLCHAIN_DIR = PROJECT_ROOT / "toolchains"
BOARD_DIR = PROJECT_ROOT / "boards"

BACKENDS = ("c", "llvm")
# release: fused kernels (FuseOps/FuseTIR), TVM's argument checks off, the toolchain's release flags.
# debug: one kernel per op, every check kept, the toolchain's debug flags.
PROFILES = ("release", "debug")
# A board's kind decides how its programs run and how they are linked.
BOARD_RUNNERS = {"host": "native", "linux": "qemu-user", "bare-metal": "qemu-system"}
# Per backend: the kernels file the build stage writes, and the metadata module files codegen writes.
KERNELS_FILE = {"c": "kernels.c", "llvm": "kernels.o"}
METADATA_FILES = {"c": ("metadata.c",), "llvm": ("metadata.ll", "metadata.o")}
# The build stage writes the C of every external module here, on targets that offload.
EXTERNAL_FILE = "external.c"
# External codegens a target may offload to (tasks/offload.py).
OFFLOAD_CODEGENS = ("crtforge_dense",)
MODEL_SUFFIXES = (".onnx", ".tflite")


class ConfigError(Exception):
    """A bad pipeline or toolchain file: `file: key: problem. HINT: fix`."""

    def __init__(self, file: Path | str, key: str, problem: str, hint: str = ""):
        self.file = str(file)
        self.key = key
        self.problem = problem
        self.hint = hint
        where = f"{self.file}: {key}" if key else self.file
        super().__init__(f"{where}: {problem}" + (f" HINT: {hint}" if hint else ""))


@dataclass(frozen=True)
class Toolchain:
    name: str
    file: Path
    description: str
    cc: str
    ar: str
    cflags: tuple[str, ...]
    ldflags: tuple[str, ...]
    libs: tuple[str, ...]
    debian_package: str
    profile_cflags: dict[str, tuple[str, ...]]  # "release"/"debug" → optimisation flags

    def settings(self) -> dict[str, Any]:
        """What a compile/link task reads, for doit's config_changed."""
        return {"name": self.name, "cc": self.cc, "ar": self.ar, "cflags": list(self.cflags),
                "ldflags": list(self.ldflags), "libs": list(self.libs),
                "profile_cflags": {k: list(v) for k, v in self.profile_cflags.items()}}


@dataclass(frozen=True)
class Memory:
    """A bare-metal board's memory map, and what the program reserves of its RAM."""
    flash_origin: int
    flash_size: int
    ram_origin: int
    ram_size: int
    stack_size: int
    heap_size: int


@dataclass(frozen=True)
class Board:
    name: str
    file: Path
    description: str
    kind: str  # "host", "linux" or "bare-metal"
    triple: str  # LLVM target triple ("" on the host: TVM's default)
    cpu: str  # TVM's mcpu ("" when not stated)
    cflags: tuple[str, ...]  # CPU and ABI flags every compile and link uses
    ldflags: tuple[str, ...]
    run: tuple[str, ...]  # argv; "{program}" stands for the linked program
    debian_package: str  # provides run[0]
    memory: Memory | None  # bare-metal only

    @property
    def runner(self) -> str:
        return BOARD_RUNNERS[self.kind]

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "triple": self.triple, "cpu": self.cpu,
                "cflags": list(self.cflags), "ldflags": list(self.ldflags), "run": list(self.run),
                "memory": None if self.memory is None else vars(self.memory)}


@dataclass(frozen=True)
class ModelConfig:
    name: str
    prefix: str  # C prefix of every symbol generated for this model
    source: Path
    inputs: Path | None
    expected: Path | None
    rtol: float
    atol: float

    @property
    def format(self) -> str:
        return self.source.suffix.lstrip(".")

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "prefix": self.prefix, "source": str(self.source),
                "inputs": str(self.inputs) if self.inputs else None,
                "expected": str(self.expected) if self.expected else None,
                "rtol": self.rtol, "atol": self.atol}


@dataclass(frozen=True)
class TargetConfig:
    name: str
    backend: str
    toolchain: Toolchain
    board: Board
    tvm: dict[str, Any]  # extra TVM target attributes, e.g. {"mfloat-abi": "hard"}
    models: tuple[str, ...]
    timeout: float  # seconds one run of the test program may take
    offload: tuple[str, ...] = ()  # external codegens (tasks/offload.py) the build partitions for
    profile: str = "release"

    @property
    def runner(self) -> str:
        return self.board.runner

    def tvm_target(self) -> dict[str, Any]:
        """The TVM target as the JSON dict that tvm.target.Target accepts: for the llvm backend the
        board's triple and CPU, then the target's own `tvm` options."""
        return tvm_target(self.backend, self.board, self.tvm)

    def cflags(self) -> list[str]:
        """Compile flags: the toolchain's, its flags for the profile, then the board's CPU and ABI flags."""
        flags = (*self.toolchain.cflags, *self.toolchain.profile_cflags[self.profile], *self.board.cflags)
        return [f.replace("{triple}", self.board.triple) for f in flags]

    def ldflags(self) -> list[str]:
        return [f.replace("{triple}", self.board.triple) for f in (*self.toolchain.ldflags, *self.board.ldflags)]

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "backend": self.backend, "toolchain": self.toolchain.name,
                "board": self.board.name, "tvm": self.tvm, "timeout": self.timeout, "offload": list(self.offload),
                "profile": self.profile}


def tvm_target(backend: str, board: Board, options: dict[str, Any]) -> dict[str, Any]:
    target: dict[str, Any] = {"kind": backend}
    if backend == "llvm":
        if board.triple:
            target["mtriple"] = board.triple
        if board.cpu:
            target["mcpu"] = board.cpu
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
class Pipeline:
    file: Path
    out: Path
    models: dict[str, ModelConfig]
    targets: dict[str, TargetConfig]
    toolchains: dict[str, Toolchain] = field(default_factory=dict)
    boards: dict[str, Board] = field(default_factory=dict)

    def pairs(self) -> list[tuple[ModelConfig, TargetConfig]]:
        """Every (model, target) pair to build, in file order."""
        return [(self.models[m], t) for t in self.targets.values() for m in t.models]


# --- reading -----------------------------------------------------------------------------------------

def _read_toml(path: Path, key: str, what: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, key, f"{what} not found.", f"create {path.name} or pass pipeline=PATH") from None
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
                                  "libs": list, "debian_package": str, "release_cflags": list, "debug_cflags": list},
                required=("cc", "ar", "debian_package"))
    _check_string_lists(path, data, ("cflags", "ldflags", "libs", "release_cflags", "debug_cflags"))
    return Toolchain(name=name, file=path, description=data.get("description", ""), cc=data["cc"], ar=data["ar"],
                     cflags=tuple(data.get("cflags", [])), ldflags=tuple(data.get("ldflags", [])),
                     libs=tuple(data.get("libs", [])), debian_package=data["debian_package"],
                     profile_cflags={p: tuple(data.get(f"{p}_cflags", [])) for p in PROFILES})


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
    _check_keys(path, "", data, {"description": str, "kind": str, "triple": str, "cpu": str, "cflags": list,
                                  "ldflags": list, "run": list, "debian_package": str, "memory": dict},
                required=("kind", "run", "debian_package"))
    if data["kind"] not in BOARD_RUNNERS:
        raise ConfigError(path, "kind", f"unknown board kind '{data['kind']}'.",
                          f"use one of: {', '.join(BOARD_RUNNERS)}")
    _check_string_lists(path, data, ("cflags", "ldflags", "run"))
    if "{program}" not in data["run"]:
        raise ConfigError(path, "run", "the command must contain \"{program}\", the program to run.")
    memory = None
    if data["kind"] == "bare-metal":
        if "memory" not in data:
            raise ConfigError(path, "memory", "a bare-metal board needs its memory map.",
                              "add [memory] with flash_origin, flash_size, ram_origin, ram_size, stack_size, "
                              "heap_size")
        keys = ("flash_origin", "flash_size", "ram_origin", "ram_size", "stack_size", "heap_size")
        _check_keys(path, "memory", data["memory"], {k: int for k in keys}, required=keys)
        memory = Memory(**data["memory"])
    return Board(name=name, file=path, description=data.get("description", ""), kind=data["kind"],
                 triple=data.get("triple", ""), cpu=data.get("cpu", ""), cflags=tuple(data.get("cflags", [])),
                 ldflags=tuple(data.get("ldflags", [])), run=tuple(data["run"]),
                 debian_package=data["debian_package"], memory=memory)


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
                                   "rtol": (int, float), "atol": (int, float)}, required=("source",))
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
        if tol in table and table[tol] < 0:
            raise ConfigError(file, f"{key}.{tol}", "must not be negative.")
    return ModelConfig(name=name, prefix=c_identifier(name), source=source, inputs=inputs, expected=expected,
                       rtol=float(table.get("rtol", 1e-4)), atol=float(table.get("atol", 1e-5)))


def _load_target(file: Path, name: str, table: Any, models: dict[str, ModelConfig],
                 toolchains: dict[str, Toolchain], boards: dict[str, Board], toolchain_dirs: tuple[Path, ...],
                 board_dirs: tuple[Path, ...]) -> TargetConfig:
    key = f"targets.{name}"
    if not isinstance(table, dict):
        raise ConfigError(file, key, "expected a table.", f"write it as [{key}]")
    _check_keys(file, key, table, {"backend": str, "toolchain": str, "board": str, "runner": str, "tvm": dict,
                                   "models": list, "timeout": (int, float), "offload": list, "profile": str},
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
    for i, m in enumerate(target_models):
        if not isinstance(m, str) or m not in models:
            near = difflib.get_close_matches(str(m), list(models), n=1)
            raise ConfigError(file, f"{key}.models[{i}]", f"unknown model {m!r}.",
                              f"did you mean '{near[0]}'?" if near else f"define [models.{m}] first")
    offload = table.get("offload", [])
    for i, codegen in enumerate(offload):
        if codegen not in OFFLOAD_CODEGENS:
            raise ConfigError(file, f"{key}.offload[{i}]", f"unknown external codegen {codegen!r}.",
                              f"crtforge has: {', '.join(OFFLOAD_CODEGENS)}")
    profile = table.get("profile", "release")
    if profile not in PROFILES:
        raise ConfigError(file, f"{key}.profile", f"unknown profile '{profile}'.", f"use one of: {', '.join(PROFILES)}")
    timeout = float(table.get("timeout", 60))
    if timeout <= 0:
        raise ConfigError(file, f"{key}.timeout", "must be a positive number of seconds.")
    target = TargetConfig(name=name, backend=table["backend"], toolchain=toolchain, board=board, tvm=dict(tvm_opts),
                          models=tuple(target_models), timeout=timeout, offload=tuple(offload), profile=profile)
    _check_abi(file, key, target)
    return target


def load_pipeline(path: Path | str, toolchain_dir: Path = TOOLCHAIN_DIR, board_dir: Path = BOARD_DIR) -> Pipeline:
    """Read and validate a pipeline file; raise ConfigError naming the file and key on any problem."""
    file = Path(path).resolve()
    data = _read_toml(file, "", "pipeline file")
    _check_keys(file, "", data, {"pipeline": dict, "models": dict, "targets": dict},
                required=("models", "targets"))
    settings = data.get("pipeline", {})
    _check_keys(file, "pipeline", settings, {"out": str, "toolchains": str, "boards": str})
    out = (file.parent / settings.get("out", "out")).resolve()
    # A pipeline may bring its own toolchain and board files: its folders are searched first.
    toolchain_dirs, board_dirs = _dirs(toolchain_dir), _dirs(board_dir)
    if "toolchains" in settings:
        toolchain_dirs = (_existing_path(file, "pipeline.toolchains", settings["toolchains"], "folder"), *toolchain_dirs)
    if "boards" in settings:
        board_dirs = (_existing_path(file, "pipeline.boards", settings["boards"], "folder"), *board_dirs)

    models: dict[str, ModelConfig] = {}
    prefixes: dict[str, str] = {}
    for name, table in data["models"].items():
        if not is_valid_name(name):
            raise ConfigError(file, f"models.{name}", "a model name is a letter, then letters, digits, '_' or '-'.")
        model = _load_model(file, name, table)
        if model.prefix in prefixes:
            raise ConfigError(file, f"models.{name}",
                              f"models '{prefixes[model.prefix]}' and '{name}' both give the C prefix "
                              f"'{model.prefix}'.", "rename one of them")
        prefixes[model.prefix] = name
        models[name] = model
    if not models:
        raise ConfigError(file, "models", "no models defined.", "add a [models.NAME] table with a source")

    toolchains: dict[str, Toolchain] = {}
    boards: dict[str, Board] = {}
    targets: dict[str, TargetConfig] = {}
    for name, table in data["targets"].items():
        if not is_valid_name(name):
            raise ConfigError(file, f"targets.{name}",
                              "a target name is a letter, then letters, digits, '_' or '-'.")
        targets[name] = _load_target(file, name, table, models, toolchains, boards, toolchain_dirs, board_dirs)
    if not targets:
        raise ConfigError(file, "targets", "no targets defined.", "add a [targets.NAME] table")
    return Pipeline(file=file, out=out, models=models, targets=targets, toolchains=toolchains, boards=boards)
