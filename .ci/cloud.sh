# Sourced by .ci/run after s3.sh (it uses ci_go_install and ci_free_port):
# starts the Google Cloud Storage emulator fake-gcs-server (built once from
# the Go module proxy, cached like versitygw) and Azurite, Microsoft's Azure
# Storage emulator (installed once from the npm registry, cached too), each
# on 127.0.0.1 with a temporary data directory, and exports what the tests
# read:
#   STORAGE_EMULATOR_HOST                  http://127.0.0.1:PORT (GCS)
#   DELTABACKUP_AZURE_CONNECTION_STRING    Azurite's well-known account
# ci_cloud_stop (run on exit) stops both and removes their data.

FAKE_GCS_VERSION=v1.56.1
AZURITE_VERSION=3.37.0

ci_cloud_stop() {
	local pid
	for pid in ${CI_GCS_PID:-} ${CI_AZURE_PID:-}; do
		kill "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	[ -n "${CI_CLOUD_DIR:-}" ] && rm -rf "$CI_CLOUD_DIR"
	CI_GCS_PID= CI_AZURE_PID=
	return 0
}

ci_wait_port() { # PORT SECONDS: until something listens
	local deadline=$((SECONDS + $2))
	until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
		[ "$SECONDS" -lt "$deadline" ] || return 1
		sleep 0.1
	done
}

ci_gcs_start() {
	local bin port
	bin=$(ci_go_install fake-gcs-server github.com/fsouza/fake-gcs-server "$FAKE_GCS_VERSION") || return 1
	CI_CLOUD_DIR=${CI_CLOUD_DIR:-$(mktemp -d)}
	port=$(ci_free_port)
	"$bin/fake-gcs-server" -scheme http -host 127.0.0.1 -port "$port" -backend filesystem \
		-filesystem-root "$CI_CLOUD_DIR/gcs" -external-url "http://127.0.0.1:$port" -log-level error >"$CI_CLOUD_DIR/gcs.log" 2>&1 &
	CI_GCS_PID=$!
	if ! ci_wait_200 "$port" /storage/v1/b 30; then
		cat "$CI_CLOUD_DIR/gcs.log" >&2
		return 1
	fi
	export STORAGE_EMULATOR_HOST="http://127.0.0.1:$port" GOOGLE_CLOUD_PROJECT=ci-project
	echo "fake-gcs-server $FAKE_GCS_VERSION on $STORAGE_EMULATOR_HOST"
}

ci_azure_start() {
	local dir="$CI_TOOLS/azurite@$AZURITE_VERSION" port
	if [ ! -e "$dir/.ok" ]; then
		echo "installing azurite $AZURITE_VERSION from npm (once; cached in $dir)" >&2
		mkdir -p "$dir"
		(cd "$dir" && npm install --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >&2) || return 1
		touch "$dir/.ok"
	fi
	CI_CLOUD_DIR=${CI_CLOUD_DIR:-$(mktemp -d)}
	mkdir -p "$CI_CLOUD_DIR/azurite"
	port=$(ci_free_port)
	"$dir/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$port" --location "$CI_CLOUD_DIR/azurite" \
		--skipApiVersionCheck --loose --silent >"$CI_CLOUD_DIR/azurite.log" 2>&1 &
	CI_AZURE_PID=$!
	if ! ci_wait_port "$port" 60; then
		cat "$CI_CLOUD_DIR/azurite.log" >&2
		return 1
	fi
	# Azurite's documented development account (not a secret).
	export DELTABACKUP_AZURE_CONNECTION_STRING="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:$port/devstoreaccount1;"
	echo "azurite $AZURITE_VERSION on 127.0.0.1:$port"
}
