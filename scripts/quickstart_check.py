"""Run the README's Quick start exactly as written, then drive the index it built with the MCP
Inspector CLI (a client nobody here wrote) from another folder: all seven tools. A command, not a
test: it needs ../shared/data and takes minutes (the index build). Writes a JSON report.

    python scripts/quickstart_check.py --out results/quickstart.json [--inspector PATH]

Run it from the checkout (the Quick start's paths are relative to it). The blocking
``geosearch serve --root .`` line is not run as such: the Inspector starts the server itself."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def quickstart_commands(readme: Path) -> list[str]:
    text = readme.read_text()
    section = text[text.index("## Quick start") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    cmds, current = [], ""
    for line in block.splitlines():
        line = line.split(" #", 1)[0].rstrip() if not line.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        current += line.rstrip("\\") + (" " if line.endswith("\\") else "")
        if not line.endswith("\\"):
            cmds.append(current.strip())
            current = ""
    return cmds


def run(cmd: str, cwd: Path, env: dict, timeout: float = 3600) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return {
        "command": cmd,
        "rc": p.returncode,
        "seconds": round(time.perf_counter() - t0, 2),
        "traceback": "Traceback" in p.stderr,
        "tail": (p.stdout + p.stderr)[-400:],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/quickstart.json")
    ap.add_argument("--inspector", default=None, help="mcp-inspector binary (default: .ci/node or PATH)")
    args = ap.parse_args(argv)
    inspector = args.inspector or next(
        (
            c
            for c in (str(REPO / ".ci/node/node_modules/.bin/mcp-inspector"), shutil.which("mcp-inspector"))
            if c and Path(c).exists()
        ),
        None,
    )
    env = {**os.environ, "GEOSEARCH_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    steps = []
    serve_roots = [str(REPO)]
    for cmd in quickstart_commands(REPO / "README.md"):
        m = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(\S+)", cmd)
        if m:  # a shell variable the later lines use
            env[m.group(1)] = m.group(2)
            continue
        if re.fullmatch(r"geosearch serve( --root \S+)+( --http)?", cmd):
            serve_roots = [str((REPO / r).resolve()) for r in re.findall(r"--root (\S+)", cmd)]
            steps.append({"command": cmd, "skipped": "blocks: the Inspector below starts the server"})
            continue
        steps.append(run(cmd, REPO, env))
        print(f"[{steps[-1]['rc']}] {steps[-1]['seconds']:7.1f}s  {cmd}", flush=True)
    calls = []
    if inspector is None:
        calls.append(
            {
                "skipped": "no MCP Inspector CLI: npm install --prefix .ci/node @modelcontextprotocol/inspector@0.15.0"
            }
        )
    else:
        elsewhere = Path(tempfile.mkdtemp(prefix="geosearch-client-"))
        base = [inspector, "--cli", sys.executable, "-m", "geosearch_server", "serve"]
        for r in serve_roots:  # the roots the README serves
            base += ["--root", r]

        def call(tool: str, **targs) -> dict:
            cmd = base + ["--method", "tools/call", "--tool-name", tool]
            for k, v in targs.items():
                cmd += ["--tool-arg", f"{k}={v if isinstance(v, str) else json.dumps(v)}"]
            t0 = time.perf_counter()
            p = subprocess.run(cmd, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
            out = json.loads(p.stdout) if p.returncode == 0 and p.stdout.strip().startswith("{") else {}
            ok = p.returncode == 0 and not out.get("isError") and out.get("structuredContent") is not None
            rec = {"tool": tool, "ok": ok, "seconds": round(time.perf_counter() - t0, 2)}
            if not ok:
                rec["error"] = (p.stdout + p.stderr)[-400:]
            calls.append(rec)
            print(
                f"[{'ok' if ok else 'FAIL'}] {rec['seconds']:6.1f}s  inspector tools/call {tool}", flush=True
            )
            return out.get("structuredContent") or {}

        idx = "naip.duckdb"
        call("parse_query", text="farmland near water", use_llm=False)
        cs = call("coarse_search", index=idx, query="a lake", k=3)
        tile = (cs.get("tiles") or [{}])[0].get("id", "s128_r0_c0")
        bbox = (cs.get("tiles") or [{}])[0].get("bbox", [0, 0, 1, 1])
        call("zoom_tile", index=idx, tile=tile, query="a lake", k=4)
        call("segment_region", index=idx, tile=tile, query="a lake", k=3)
        region = [{"id": "r1", "bbox": bbox}]
        call("check_relation", index=idx, regions=region, predicate="near", layer="water", distance_m=100)
        call("explain", index=idx, regions=region, query="a lake", use_llm=False)
        call("answer", text="farmland near water", index=idx, k=3)
    report = {
        "readme_steps": steps,
        "inspector_calls": calls,
        "all_ok": all(s.get("rc", 0) == 0 and not s.get("traceback") for s in steps)
        and all(c.get("ok", False) for c in calls),
    }
    from geosearch.fileio import atomic_write_json

    atomic_write_json(args.out, report)
    print(f"all_ok={report['all_ok']} -> {args.out}")
    return 0 if report["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
