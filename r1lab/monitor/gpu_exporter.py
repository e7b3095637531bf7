"""A Prometheus exporter of GPU telemetry from `nvidia-smi`, for pods where dcgm-exporter is not available.

Standard library only: it is copied to a pod and run there with `python3 gpu_exporter.py --port 9400`.
Each scrape runs one `nvidia-smi --query-gpu=... --format=csv,noheader,nounits` and exports dcgm-exporter's
names and units (DCGM_FI_DEV_FB_USED/FB_FREE in MiB, GPU_UTIL in %, POWER_USAGE in W, GPU_TEMP in C) with its
labels (gpu, UUID, modelName, Hostname), so dashboards and reports read either exporter the same way.
A failing nvidia-smi is exported as r1lab_gpu_exporter_up 0 with the error, never as made-up values.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

QUERY = "index,uuid,name,memory.used,memory.free,memory.total,utilization.gpu,power.draw,temperature.gpu"
# dcgm-exporter name, help, column index in QUERY
FIELDS = [
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", 3),
    ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", 4),
    ("r1lab_gpu_memory_total_mib", "Framebuffer memory total (in MiB).", 5),
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", 6),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", 7),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", 8),
]


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(text: str) -> float | None:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        return None  # "[N/A]", "[Not Supported]"


def render(csv_text: str, hostname: str) -> str:
    """Prometheus text exposition for nvidia-smi's CSV output."""
    rows = [[c.strip() for c in line.split(",")] for line in csv_text.strip().splitlines() if line.strip()]
    out = ["# HELP r1lab_gpu_exporter_up 1 if nvidia-smi answered.", "# TYPE r1lab_gpu_exporter_up gauge",
           "r1lab_gpu_exporter_up 1"]  # fmt: skip
    for name, help_, col in FIELDS:
        out += [f"# HELP {name} {help_}", f"# TYPE {name} gauge"]
        for r in rows:
            if len(r) < len(QUERY.split(",")):
                raise ValueError(f"nvidia-smi row has {len(r)} fields, expected {len(QUERY.split(','))}: {r}")
            value = _number(r[col])
            if value is None:
                continue
            labels = f'gpu="{_escape(r[0])}",UUID="{_escape(r[1])}",modelName="{_escape(r[2])}",Hostname="{_escape(hostname)}"'
            out.append(f"{name}{{{labels}}} {value:g}")
    return "\n".join(out) + "\n"


def scrape(nvidia_smi: str = "nvidia-smi", timeout: float = 10.0) -> str:
    proc = subprocess.run(
        [nvidia_smi, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"nvidia-smi exited {proc.returncode}: {proc.stderr.strip()[:300]}")
    return proc.stdout


def make_handler(nvidia_smi: str, hostname: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            try:
                body = render(scrape(nvidia_smi), hostname)
            except Exception as exc:  # noqa: BLE001 - the error is exported, the server keeps serving
                msg = _escape(f"{type(exc).__name__}: {exc}")
                body = (
                    "# HELP r1lab_gpu_exporter_up 1 if nvidia-smi answered.\n# TYPE r1lab_gpu_exporter_up gauge\n"
                    f'r1lab_gpu_exporter_up{{error="{msg}"}} 0\n'
                )
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prometheus exporter of nvidia-smi GPU telemetry")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9400)
    parser.add_argument("--nvidia-smi", default="nvidia-smi")
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(args.nvidia_smi, socket.gethostname()))
    print(f"serving GPU metrics on http://{args.host}:{server.server_address[1]}/metrics", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
