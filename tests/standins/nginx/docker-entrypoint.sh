#!/usr/bin/env bash
set -euo pipefail
template_dir=${NGINX_ENVSUBST_TEMPLATE_DIR:-/etc/nginx/templates}
output_dir=${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}
suffix=${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}
if [[ -d $template_dir ]]; then
  # shellcheck disable=SC2046 # one word per variable name, on purpose
  defined=$(printf '${%s} ' $(env | cut -d= -f1))
  find "$template_dir" -follow -type f -name "*$suffix" -print | while read -r template; do
    relative=${template#"$template_dir/"}
    target="$output_dir/${relative%"$suffix"}"
    mkdir -p "$(dirname "$target")"
    envsubst "$defined" <"$template" >"$target"
  done
fi
exec "$@"
