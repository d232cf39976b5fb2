# shellcheck shell=bash
# Shared by the operator scripts: strict mode, messages, and `compose` run from the repository
# root so that the project's docker-compose.yml and .env are the ones used wherever the script
# is called from. COMPOSE_PROJECT_NAME / COMPOSE_FILE from the environment are honoured.
set -euo pipefail

MLSTACK_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

info() { printf '%s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Preconditions, checked before a script changes anything: what to install, said plainly.
((BASH_VERSINFO[0] >= 4)) || die "bash 4 or newer is needed (this is $BASH_VERSION)"
TOOLS_CHECKED=""
require_tools() {
  [[ -n $TOOLS_CHECKED ]] && return 0
  command -v docker >/dev/null || die "docker is not installed: install Docker Engine 20.10 or newer"
  docker info >/dev/null 2>&1 || die "the Docker engine does not answer: start it, or run as a user in the docker group"
  local version
  version=$(docker compose version --short 2>/dev/null) \
    || die "Docker Compose v2 is not installed: install the docker-compose-plugin (2.17 or newer)"
  version=${version#v}
  # depends_on.restart (nginx follows a new certificate) needs Compose 2.17.
  printf '2.17.0\n%s\n' "$version" | sort -V -C \
    || die "Docker Compose $version is too old: 2.17 or newer is needed"
  TOOLS_CHECKED=1
}

compose() { require_tools; (cd "$MLSTACK_ROOT" && docker compose "$@"); }

# usage_from_header FILE: print the comment block at the top of FILE (its --help text).
usage_from_header() { sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$1"; }

want_help() { for arg in "$@"; do [[ $arg == -h || $arg == --help ]] && return 0; done; return 1; }

running() { require_tools; [[ -n $(compose ps --status running -q "$1" 2>/dev/null) ]]; } # SERVICE

require_running() { # SERVICE
  running "$1" && return 0
  refuse_on_swarm
  die "the $1 service is not running: start the platform with 'docker compose up -d --wait'"
}

# The compose scripts on a node of a Swarm stack (same volume names as compose): say so,
# rather than offer to start a second platform on its volumes.
refuse_on_swarm() {
  local stack
  stack=$(setting MLSTACK_STACK_NAME mlstack)
  [[ -z $(docker ps -q --filter "label=com.docker.stack.namespace=$stack" | head -n 1) ]] \
    || die "the platform runs here as Docker Swarm stack '$stack': scripts/$(basename "$0") works" \
      "with docker compose only; see README, \"The platform on Docker Swarm\" (scripts/swarm)"
}

# setting NAME DEFAULT: NAME from the environment, else its last assignment in .env, else
# DEFAULT. The scripts read only the few settings of their own this way.
setting() {
  local name=$1 default=$2 value=""
  if [[ -n ${!name:-} ]]; then printf '%s\n' "${!name}"; return; fi
  if [[ -f $MLSTACK_ROOT/.env ]]; then
    value=$(sed -n "s/^[[:space:]]*${name}[[:space:]]*=[[:space:]]*//p" "$MLSTACK_ROOT/.env" | tail -n 1)
    value=${value%\"}; value=${value#\"}; value=${value%\'}; value=${value#\'}
  fi
  printf '%s\n' "${value:-$default}"
}

# confirm QUESTION: true when the operator agrees; --yes (ASSUME_YES=1) agrees in advance.
confirm() {
  [[ ${ASSUME_YES:-0} == 1 ]] && return 0
  [[ -t 0 ]] || die "$1: no terminal to ask on; pass --yes to agree in advance"
  local answer
  read -r -p "$1 [y/N] " answer
  [[ $answer == [yY] || $answer == [yY][eE][sS] ]]
}

# The compose project name (COMPOSE_PROJECT_NAME or the file's `name:`), which prefixes the
# names of its volumes.
project_name() { compose config 2>/dev/null | sed -n 's/^name: *//p' | head -n 1; }

# The volumes that hold the platform's state (`docker compose down -v` would delete them).
# remote-job-logs is not in backups (each run keeps its job's log as an artifact), but a
# restore empties it: its files are named after job ids, which the restored queue reuses.
# shellcheck disable=SC2034 # used by the scripts that source this file
STATE_VOLUMES=(postgres-data minio-data secrets ca tls postgres-secrets minio-secrets mlflow-secrets
               janitor-secrets trainer-secrets worker-secrets tensorboard-secrets tb-logs job-logs
               remote-job-logs)

# The databases a backup holds, each with the role that owns it (created by init).
# shellcheck disable=SC2034 # used by the scripts that source this file
DATABASES=(mlflow:mlflow mlflow_auth:mlflow trainer:trainer)

# exec_in SERVICE ARGS...: a command in the running SERVICE: the compose project's container
# or, on Docker Swarm, the stack's task on this node (README, "The platform on Docker Swarm").
exec_in() {
  local service=$1 task
  shift
  if running "$service"; then compose exec -T "$service" "$@"; return; fi
  task=$(docker ps -q --filter \
    "label=com.docker.swarm.service.name=$(setting MLSTACK_STACK_NAME mlstack)_$service" | head -n 1)
  [[ -n $task ]] || die "the $service service is not running here: start the platform with" \
    "'docker compose up -d --wait' (on Docker Swarm: run this on the node that runs $service)"
  docker exec -i "$task" "$@"
}

# on_job_files COMMAND ARGS...: runs in a one-off trainer container with the shared job volumes
# (tb-logs, job-logs). The worker lacks DAC_OVERRIDE so that it cannot read what jobs own; an
# operator's restore or gc must reach every job's files, so this one-off has it.
on_job_files() {
  compose run --rm --no-deps -T --cap-add DAC_OVERRIDE --cap-add FOWNER --entrypoint "$1" \
    trainer "${@:2}"
}

# platform_admin ROLE ARGS...: an admin command of the platform image (credentials, users, ops)
# in a one-off `init` container: with init-secrets, the only service that mounts the whole
# secrets store. The long-running services each see only their own secrets.
platform_admin() { compose run --rm --no-deps -T init "$@"; }

psql_exec() { compose exec -T postgres psql -U postgres -v ON_ERROR_STOP=1 -qAt "$@"; }

# migrate_tensorboard_layout: TensorBoard folders of a release that named them after experiments
# move to <experiment id>/ (trainer/mlstack_trainer/tb_layout.py). Idempotent; prints each move.
migrate_tensorboard_layout() {
  psql_exec -d mlflow -F $'\t' -c "SELECT run_uuid, experiment_id FROM runs" \
    | on_job_files mlstack-trainer migrate-tensorboard
}
