#!/bin/sh
# The image's install steps (deploy/docker/Dockerfile runs this script), kept as a script so a test
# can run the same steps outside a container engine (tests/deploy_containers/test_image_install.py).
#
#   install.sh [SOURCE_DIR]
#
# Installs the project from SOURCE_DIR (default: the current directory) with the extras the
# container profiles load (dagster-docker, dagster-k8s, dagster-aws), every version held to the
# lock file SOURCE_DIR/constraints.txt, into the Python environment of `${PYTHON:-python3}`; then
# checks that what an instance of each profile imports is there and consistent.
set -eu

src=${1:-.}
python=${PYTHON:-python3}

if [ ! -f "$src/constraints.txt" ]; then
    echo "install.sh: $src/constraints.txt is missing: the image installs only the versions it pins" >&2
    exit 2
fi

"$python" -m pip install --disable-pip-version-check \
    -c "$src/constraints.txt" "$src[docker,k8s,aws]"

# A dependency pip could not reconcile fails here, not at the first run in production.
"$python" -m pip check
"$python" -c "import backfill_dagster.definitions, dagster_postgres, dagster_docker, dagster_k8s, dagster_aws.s3.compute_log_manager"
for executable in dagster dagster-webserver dagster-daemon backfill-dagster; do
    command -v "$executable" >/dev/null || { echo "install.sh: $executable is not on PATH" >&2; exit 1; }
done
