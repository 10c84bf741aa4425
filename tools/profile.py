"""`make profile`: where the filter's own code spends its time.

Runs Weir's module (built with its function names) under wasmtime with a stub proxy-wasm
host (tools/profile), PROFILE_REQUESTS buffered chat completions (PROFILE_STREAM=1: streamed
ones; PROFILE_BODY_BYTES: a user message of that many bytes) with the demo key and the
`standard` policy (PROFILE_POLICY; empty for none), and prints the time per request, the
host calls per request and, when `perf` is installed, the functions that take the time
(inclusive share of the filter's samples). The stub host is not Envoy: compare builds of
the module with it, measure Weir's cost with `make bench`. PROFILE_UNCACHED=1 turns the
policy decision cache off (`make bench`'s `buffered-uncached`: the policy runs for every
request). PROFILE_FUEL=1 also prints the
wasm instructions per request (wasmtime's fuel): exact and independent of the machine's
load, the way to compare two builds' own code (time in the profile is noisy to ±1 µs).
"""
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import devstack

OUT = devstack.ROOT / "target/profile"
HARNESS = OUT / "host/release/weir-profile"
MODULE = OUT / "weir-named.wasm"


def bundle(work: Path) -> Path:
    """The sample configuration bundled for the named module (no global default policy)."""
    config = work / "weir.toml"
    text = devstack.sample_config_text().replace('default = "standard"\n', "")
    if os.environ.get("PROFILE_UNCACHED"):
        text = text.replace("[policy]\n", "[policy]\ndecision_cache = false\n")
    config.write_text(text)
    devstack.WASM = MODULE
    stack = devstack.Stack(work, config=config)
    done = stack.bundle()
    if done.returncode != 0:
        sys.exit(f"weir bundle failed: {done.stderr}")
    return stack.filter_config


def frames(script: str):
    """Each sample's stack (leaf first) from `perf script` output."""
    stack: list[str] = []
    for line in script.splitlines():
        if not line.strip():
            if stack:
                yield stack
            stack = []
        elif line[0] in "\t ":
            symbol = line.strip().split(None, 1)[-1]
            stack.append(re.sub(r"(\+0x[0-9a-f]+)? \(.*\)$", "", symbol))
    if stack:
        yield stack


def readable(symbol: str) -> str:
    """A legacy-mangled Rust name (`_ZN` + length-prefixed parts), demangled enough to read."""
    if symbol.startswith("_ZN"):
        parts, at = [], 3
        while at < len(symbol) and symbol[at].isdigit():
            digits = re.match(r"\d+", symbol[at:]).group()
            at += len(digits)
            parts.append(symbol[at:at + int(digits)])
            at += int(digits)
        if parts and re.fullmatch(r"h[0-9a-f]{16}", parts[-1]):
            parts.pop()
        symbol = "::".join(parts)
    for code, text in (("$LT$", "<"), ("$GT$", ">"), ("$u20$", " "), ("$RF$", "&"), ("$C$", ","), ("..", "::")):
        symbol = symbol.replace(code, text)
    return symbol[:110]


def main() -> int:
    requests = os.environ.get("PROFILE_REQUESTS", "100000")
    policy = os.environ.get("PROFILE_POLICY", "standard")
    stream = ["stream"] if os.environ.get("PROFILE_STREAM") else []
    work = Path(tempfile.mkdtemp(prefix="weir-profile-"))
    try:
        return profile([str(HARNESS), str(MODULE), str(bundle(work)), requests, policy] + stream)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def profile(command: list[str]) -> int:
    perf = shutil.which("perf")
    if not perf:
        print("perf is not installed: time and host calls only", file=sys.stderr)
        return subprocess.call(command)
    data = OUT / "perf.data"
    # wasmtime writes the JIT's symbols to /tmp/perf-PID.map, which `perf report` on
    # perf.data needs: the last run's map stays, each earlier one goes (~400 KB a run).
    maps_list = OUT / "perf-maps.txt"
    for old in maps_list.read_text().split() if maps_list.exists() else []:
        Path(old).unlink(missing_ok=True)
    before = set(Path("/tmp").glob("perf-*.map"))
    code = subprocess.call([perf, "record", "-q", "-F", "10000", "-g", "-o", str(data), "--"] + command)
    maps_list.write_text("".join(f"{m}\n" for m in sorted(set(Path("/tmp").glob("perf-*.map")) - before)))
    if code != 0:
        return code
    script = subprocess.run([perf, "script", "-i", str(data)], capture_output=True, text=True).stdout
    filter_samples = [s for s in frames(script) if any(f.startswith("proxy_on_") for f in s)]
    inclusive: collections.Counter[str] = collections.Counter()
    for sample in filter_samples:
        inclusive.update({readable(f) for f in sample if not f.startswith(("wasm[", "wasmtime", "weir_profile"))})
    total = max(len(filter_samples), 1)
    print(f"\n{total} samples in the filter's callbacks; inclusive share of them:")
    for name, n in inclusive.most_common(int(os.environ.get("PROFILE_TOP", "40"))):
        print(f"{100 * n / total:5.1f}%  {name}")
    print(f"\n(perf data: {data}; `perf report -i {data}` for more)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
