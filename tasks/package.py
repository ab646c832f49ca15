"""What a firmware project consumes: per pair (and per firmware) an install tree with the library, its headers, a
CMake package, a pkg-config file and a provenance manifest; per pair also a Model Library Format tarball in the
layout microTVM's `tvmc` wrote, for projects moving over.

    out/<target>/<model>/package/            CMAKE_PREFIX_PATH / pkg-config prefix
        include/<prefix>.h, include/crtforge/...    the model's typed API and the runtime headers it needs
        lib/lib<prefix>.a
        lib/cmake/<model>/<model>Config.cmake, <model>ConfigVersion.cmake
        lib/pkgconfig/<model>.pc
        share/<model>/manifest.json          where every byte came from: model, versions, tools, flags, revision
        share/<model>/board/                 bare-metal: crtforge's start-up code and the board's linker script
    out/<target>/<model>/<model>.mlf.tar     Model Library Format (mlf_members says what is in it)

Both are written whole or not at all: the tree is built beside its place and renamed into it.
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks import fsutil
from tasks.config import PROJECT_ROOT, TargetConfig
from tasks.deps import versions
from tasks.emit.codegen import _env
from tasks.firmware import Firmware
from tasks.frontend.importer import read_signature
from tasks.pair import Pair
from tasks.toolchain.link import BARE_METAL_SOURCES, CRT_DIR, CRT_INCLUDE, require_tool

# The version of crtforge's package layout and API; CMake's version file and the .pc file carry it.
CRTFORGE_VERSION = "0.25.0"
MLF_VERSION = 7  # metadata.json's "version", as TVM 0.13's tvmc wrote it


@dataclass(frozen=True)
class PackageSpec:
    """One package: a model's pair or a firmware, on one target."""
    what: str  # "model" or "firmware"
    name: str  # the package name: find_package(<name>), <name>.pc, <name>::<name>
    prefix: str  # the C prefix: lib<prefix>.a
    target: TargetConfig
    library: Path
    headers: tuple[Path, ...]
    arena_bytes: int
    models: tuple[Pair, ...]  # whose sources went in
    dir: Path  # the package folder
    linker_script: Path | None  # bare-metal boards: the one the test program was linked with

    @property
    def sources_line(self) -> str:
        return ", ".join(f"{p.model.source.name} (sha256 {fsutil.sha256_file(p.model.source)[:16]})"
                         for p in self.models)


def _link_parts(target: TargetConfig) -> tuple[list[str], list[str], list[str]]:
    """(compile options, link options, libraries) that a consumer must use: the board's CPU and ABI flags, and the
    toolchain's and board's link flags and libraries the test program was linked with. The CPU and ABI flags are
    link options too: GCC picks the C library's variant (multilib) by them."""
    libs = [f[2:] for f in target.toolchain.libs if f.startswith("-l")]
    other = [f for f in target.toolchain.libs if not f.startswith("-l")]
    return list(target.board.cflags), [*target.board.cflags, *target.ldflags(), *other], libs


@functools.cache
def tool_version(tool: str) -> str:
    """The first line of `tool --version` (what built or runs a package)."""
    proc = subprocess.run([tool, "--version"], capture_output=True, text=True)
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0] if lines else f"{tool}: no version output"


@functools.cache
def crtforge_revision() -> dict[str, Any]:
    """The git commit this checkout is at, and whether it has uncommitted changes (None outside git)."""
    try:
        head = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
        status = subprocess.run(["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True)
    except OSError:
        return {"commit": None, "modified": None}
    if head.returncode != 0:
        return {"commit": None, "modified": None}
    return {"commit": head.stdout.strip(), "modified": bool(status.stdout.strip())}


def manifest(spec: PackageSpec) -> dict[str, Any]:
    t = spec.target
    tc = t.toolchain
    tools = {"cc": tool_version(require_tool(tc, tc.cc)), "ar": tool_version(require_tool(tc, tc.ar))}
    if t.board.run and t.board.run[0] != "{program}" and shutil.which(t.board.run[0]):
        tools["emulator"] = tool_version(t.board.run[0])
    compile_options, link_options, libs = _link_parts(t)
    return {
        "package": {"name": spec.name, "kind": spec.what, "version": CRTFORGE_VERSION, "library": spec.library.name,
                    "arena_bytes": spec.arena_bytes},
        "models": [{"name": p.model.name, "source": p.model.source.name,
                    "sha256": fsutil.sha256_file(p.model.source)} for p in spec.models],
        "target": {"name": t.name, "backend": t.backend, "board": t.board.name, "tvm_target": t.tvm_target(),
                   "toolchain": tc.name},
        "versions": dict(versions()),
        "tools": tools,
        "flags": {"cflags": t.cflags(), "kernel_cflags": t.cflags(kernel=True), "ldflags": t.ldflags(),
                  "libs": list(tc.libs), "consumer_compile_options": compile_options,
                  "consumer_link_options": link_options},
        "crtforge": {"version": CRTFORGE_VERSION, **crtforge_revision()},
        "files": {"lib/" + spec.library.name: fsutil.sha256_file(spec.library),
                  **{"include/" + h.name: fsutil.sha256_file(h) for h in spec.headers}},
    }


def write_package(spec: PackageSpec) -> None:
    """The install tree of `spec`, swapped into spec.dir in one rename."""
    compile_options, link_options, libs = _link_parts(spec.target)
    bare_metal = spec.target.board.kind == "bare-metal"
    env = _env()
    context = {"spec": spec, "version": CRTFORGE_VERSION, "major": CRTFORGE_VERSION.split(".")[0],
               "library": spec.library.name, "var": spec.prefix, "bare_metal": bare_metal,
               "compile_options": compile_options, "link_options": link_options, "link_libraries": libs}

    def build(root: Path) -> None:
        shutil.copytree(CRT_INCLUDE, root / "include")
        for h in spec.headers:
            shutil.copy2(h, root / "include" / h.name)
        (root / "lib").mkdir()
        shutil.copy2(spec.library, root / "lib" / spec.library.name)
        cmake = root / "lib" / "cmake" / spec.name
        cmake.mkdir(parents=True)
        (cmake / f"{spec.name}Config.cmake").write_text(env.get_template("package-config.cmake.j2").render(**context))
        (cmake / f"{spec.name}ConfigVersion.cmake").write_text(
            env.get_template("package-config-version.cmake.j2").render(**context))
        (root / "lib" / "pkgconfig").mkdir()
        (root / "lib" / "pkgconfig" / f"{spec.name}.pc").write_text(env.get_template("package.pc.j2").render(**context))
        share = root / "share" / spec.name
        share.mkdir(parents=True)
        fsutil.write_json(share / "manifest.json", manifest(spec))
        if bare_metal:
            (share / "board").mkdir()
            for src in BARE_METAL_SOURCES:
                shutil.copy2(src, share / "board" / src.name)
            shutil.copy2(spec.linker_script, share / "board" / "board.ld")

    fsutil.write_tree(spec.dir, build)


# --- Model Library Format -----------------------------------------------------------------------------------------

def mlf_metadata(p: Pair) -> dict[str, Any]:
    """metadata.json: tvmc's fields (version 7) for an AOT full-model export, plus crtforge's own."""
    plan = fsutil.read_json(p.files.plan_json)
    sizes = fsutil.read_json(p.files.sizes_json)
    sig = fsutil.read_json(p.model_files.import_json)["signature"]
    weights = p.files.weights_bin.stat().st_size
    spec = read_signature(p.model_files.import_json)
    io_bytes = sum(t.nbytes for t in (*spec.inputs, *spec.outputs))
    return {
        "version": MLF_VERSION,
        "modules": {p.model.prefix: {
            "model_name": p.model.prefix,
            "executors": ["aot"],
            "style": "full-model",
            "target": [str(p.target.tvm_target())],
            "memory": {"functions": {"main": [{"device": 1, "workspace_size_bytes": plan["arena_bytes"],
                                               "constants_size_bytes": weights, "io_size_bytes": io_bytes}]}},
            "external_dependencies": [],
        }},
        "crtforge": {"model": p.model.name, "target": p.target.name, "backend": p.target.backend,
                     "signature": sig, "header": p.files.header.name, "run": f"{p.model.prefix}_run",
                     "library_sizes": sizes["library"], "runtime": "runtime/ (crtforge's crt/: build its src/*.c)"},
    }


def mlf_members(p: Pair) -> list[tuple[str, Path]]:
    """(name in the tarball, file) of the pair's Model Library Format: tvmc's layout, with crtforge's files.

    metadata.json                    what the export is (mlf_metadata)
    codegen/host/src/                the C of the library: TVM's kernels (c backend), the metadata module, the
                                     executor, external modules, the weights' assembler file and its blob
    codegen/host/lib/                objects TVM's LLVM wrote (llvm backend): kernels.o, metadata.o
    codegen/host/include/            the model header
    parameters/<prefix>.params       the weights in TVM's parameter format (tvm.runtime.save_param_dict)
    src/                             the source model
    runtime/                         crtforge's C runtime (crt/include, crt/src): the export builds alone
    """
    f = p.files
    members = []
    for src in (f.kernels, *f.metadata, f.executor_c, f.external_c, f.weights_asm, f.weights_bin):
        if src.suffix == ".ll":
            continue  # metadata.o is what it compiles to
        where = "lib" if src.suffix == ".o" else "src"
        members.append((f"codegen/host/{where}/{src.name}", src))
    members.append((f"codegen/host/include/{f.header.name}", f.header))
    members.append((f"src/{p.model.source.name}", p.model.source))
    for path in sorted(CRT_DIR.rglob("*")):
        if path.is_file() and path.suffix in (".c", ".h") and "boards" not in path.relative_to(CRT_DIR).parts:
            members.append((f"runtime/{path.relative_to(CRT_DIR)}", path))
    return members


def _params_bytes(p: Pair) -> bytes:
    import tvm

    params = fsutil.load_npz(p.files.params_npz)
    return bytes(tvm.runtime.save_param_dict({k: tvm.runtime.tensor(v) for k, v in params.items()}))


def write_mlf(p: Pair, path: Path) -> None:
    """The tarball: reproducible (sorted, no owners, fixed times), written atomically."""
    buf = io.BytesIO()

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        tar.addfile(info, io.BytesIO(data))

    import json

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        add(tar, "metadata.json", (json.dumps(mlf_metadata(p), indent=2, sort_keys=True) + "\n").encode())
        for name, src in mlf_members(p):
            add(tar, name, src.read_bytes())
        add(tar, f"parameters/{p.model.prefix}.params", _params_bytes(p))
    fsutil.write_bytes(path, buf.getvalue())


# --- per pair and per firmware ------------------------------------------------------------------------------------

def pair_package(p: Pair) -> PackageSpec:
    f = p.files
    return PackageSpec(what="model", name=p.model.name, prefix=p.model.prefix, target=p.target, library=f.library,
                       headers=(f.header,), arena_bytes=fsutil.read_json(f.plan_json)["arena_bytes"], models=(p,),
                       dir=f.package_dir, linker_script=f.linker_script if f.linker_script.exists() else None)


def firmware_package(fw: Firmware) -> PackageSpec:
    f = fw.files
    return PackageSpec(what="firmware", name=fw.config.name, prefix=fw.config.prefix, target=fw.target,
                       library=f.library, headers=(f.header, *(p.files.header for p in fw.pairs)),
                       arena_bytes=fsutil.read_json(f.sizes_json)["arena_bytes"], models=fw.pairs,
                       dir=f.package_dir, linker_script=f.linker_script if f.linker_script.exists() else None)


def package_pair(p: Pair) -> None:
    """`doit package`, per pair: the install tree and the Model Library Format tarball."""
    write_package(pair_package(p))
    write_mlf(p, p.files.mlf_tar)


def package_firmware(fw: Firmware) -> None:
    write_package(firmware_package(fw))
