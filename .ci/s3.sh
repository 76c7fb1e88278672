# Sourced by .ci/run: builds (once, cached outside the repository) and
# starts a real S3-compatible server, versitygw, on 127.0.0.1 with a
# temporary data directory, and exports what the S3 tests read:
#   DELTABACKUP_S3_ENDPOINT   http://127.0.0.1:PORT
#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION
# ci_s3_stop (run on exit) stops it and removes the data.

CI_TOOLS=${CI_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/deltabackup-ci}
VERSITYGW_VERSION=v1.8.0

ci_go_install() { # NAME PKG VERSION: prints the directory holding the binary
	local dir="$CI_TOOLS/$1@$3"
	if [ ! -e "$dir/.ok" ]; then
		echo "building $1 $3 (once; cached in $dir)" >&2
		mkdir -p "$dir"
		local start=$SECONDS
		GOBIN="$dir" GOFLAGS=-buildvcs=false go install -trimpath -ldflags='-s -w' "$2@$3" >&2 || return 1
		touch "$dir/.ok"
		echo "built $1 in $((SECONDS - start))s" >&2
	fi
	echo "$dir"
}

ci_free_port() {
	local p
	while :; do
		p=$((20000 + RANDOM % 40000))
		(exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
	done
}

ci_wait_200() { # PORT PATH SECONDS: until GET PATH answers 200
	local deadline=$((SECONDS + $3))
	until (exec 3<>"/dev/tcp/127.0.0.1/$1" &&
		printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3 &&
		head -c 12 <&3) 2>/dev/null | grep -q ' 200'; do
		[ "$SECONDS" -lt "$deadline" ] || return 1
		sleep 0.1
	done
}

ci_s3_stop() {
	if [ -n "${CI_S3_PID:-}" ]; then
		kill "$CI_S3_PID" 2>/dev/null
		wait "$CI_S3_PID" 2>/dev/null
	fi
	[ -n "${CI_S3_DIR:-}" ] && rm -rf "$CI_S3_DIR"
	CI_S3_PID=
	return 0
}

ci_s3_start() {
	local vgw port
	vgw=$(ci_go_install versitygw github.com/versity/versitygw/cmd/versitygw "$VERSITYGW_VERSION") || return 1
	CI_S3_DIR=$(mktemp -d)
	mkdir -p "$CI_S3_DIR/data"
	export AWS_ACCESS_KEY_ID=ci-access-key AWS_SECRET_ACCESS_KEY=ci-secret-key-0123456789 AWS_REGION=us-east-1
	port=$(ci_free_port)
	# --keep-alive: without it versitygw closes every connection, which real
	# S3 does not; connection reuse and stalls could not be tested.
	ROOT_ACCESS_KEY=$AWS_ACCESS_KEY_ID ROOT_SECRET_KEY=$AWS_SECRET_ACCESS_KEY \
		"$vgw/versitygw" --port "127.0.0.1:$port" --health /health --keep-alive --quiet \
		posix "$CI_S3_DIR/data" >"$CI_S3_DIR/versitygw.log" 2>&1 &
	CI_S3_PID=$!
	if ! ci_wait_200 "$port" /health 30; then
		cat "$CI_S3_DIR/versitygw.log" >&2
		return 1
	fi
	export DELTABACKUP_S3_ENDPOINT="http://127.0.0.1:$port"
	echo "versitygw $VERSITYGW_VERSION serving $CI_S3_DIR/data on $DELTABACKUP_S3_ENDPOINT"
}
