#!/usr/bin/env bash
# Prints the `export` lines that point kubectl, helm and the e2e tests at the local
# cluster and put the project's own kubectl and helm first on PATH.
# usage: eval "$(hack/cluster-env.sh)"
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
echo "export KUBECONFIG=$KUBECONFIG_PATH"
echo "export PATH=$K8S_BIN:$HELM_BIN:\$PATH"
