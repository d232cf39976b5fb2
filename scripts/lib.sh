# Shared by the operator scripts: strict mode, messages, and `compose` run from the repository
# root so that the project's docker-compose.yml and .env are the ones used wherever the script
# is called from. COMPOSE_PROJECT_NAME / COMPOSE_FILE from the environment are honoured.
set -euo pipefail

MLSTACK_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

info() { printf '%s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

compose() { (cd "$MLSTACK_ROOT" && docker compose "$@"); }

# usage_from_header FILE: print the comment block at the top of FILE (its --help text).
usage_from_header() { sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$1"; }

want_help() { for arg in "$@"; do [[ $arg == -h || $arg == --help ]] && return 0; done; return 1; }

require_running() { # SERVICE
  [[ -n $(compose ps --status running -q "$1" 2>/dev/null) ]] \
    || die "the $1 service is not running: start the platform with 'docker compose up -d --wait'"
}
