# Shell helpers shared by test/run, test/asan, test/bench/*.sh and demo/run.
# Source it from the repository root: it sets PGVER, PGBIN and PG_CONFIG when they are unset.

PGVER=${PGVER:-15}
PGBIN=${PGBIN:-/usr/lib/postgresql/$PGVER/bin}
PG_CONFIG=${PG_CONFIG:-$PGBIN/pg_config}

as_postgres() {
	if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

# Installs the packages the build and the tests need, when some are missing.
gdpr_install_deps() {
	local pkgs="postgresql-$PGVER postgresql-server-dev-$PGVER postgresql-$PGVER-pgtap
		libtap-parser-sourcehandler-pgtap-perl libipc-run-perl make gcc"
	local missing="" p
	for p in $pkgs; do
		dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
	done
	[ -z "$missing" ] && return 0
	echo "installing:$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq && apt-get install -y -qq $missing >/dev/null
}

gdpr_build_install() {
	make -s clean PG_CONFIG="$PG_CONFIG" >/dev/null 2>&1
	make -s PG_CONFIG="$PG_CONFIG" "$@" && make -s install PG_CONFIG="$PG_CONFIG" "$@" >/dev/null
}

gdpr_free_port() {
	local port
	for port in $(seq 54320 54400); do
		if ! (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && [ ! -e "/tmp/.s.PGSQL.$port" ]; then
			echo "$port"
			return
		fi
	done
	echo 54399
}

# gdpr_start_server <datadir> <port> <socketdir> [extra postgresql.conf lines] [server env ...]
gdpr_start_server() {
	local data=$1 port=$2 sock=$3 extra=${4:-}
	shift 4 2>/dev/null || shift $#
	as_postgres "$PGBIN/initdb" -D "$data" -A trust -U postgres --no-sync >/dev/null || return 1
	cat >>"$data/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$sock'
fsync = ${GDPR_FSYNC:-off}
log_min_messages = warning
$extra
CONF
	as_postgres env "$@" "$PGBIN/pg_ctl" -D "$data" -l "$data/server.log" -w start >/dev/null
}

gdpr_stop_server() {
	as_postgres "$PGBIN/pg_ctl" -D "$1" -m fast -w stop >/dev/null 2>&1 || true
}

# gdpr_bench_server [extra postgresql.conf lines]: installs, builds and starts the throwaway
# server a benchmark measures (durable, as in production), stopped and removed on exit.  Sets
# WORK and PORT, and defines psql_ for the postgres database there.
gdpr_bench_server() {
	gdpr_install_deps
	gdpr_build_install >/dev/null
	WORK=$(mktemp -d /tmp/gdpr-bench.XXXXXX)
	chown postgres "$WORK"
	PORT=$(gdpr_free_port)
	GDPR_FSYNC=on gdpr_start_server "$WORK/data" "$PORT" "$WORK" "${1:-}"
	trap 'gdpr_stop_server "$WORK/data"; rm -rf "$WORK"' EXIT
}

psql_() {
	as_postgres "$PGBIN/psql" -X -q -h "$WORK" -p "$PORT" -d postgres -v ON_ERROR_STOP=1 "$@"
}
