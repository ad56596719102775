# Shell helpers shared by test/run, test/asan, test/bench/*.sh and demo/run.
# Source it from the repository root: it sets PGVER, PGBIN and PG_CONFIG when they are unset.
#
# PostgreSQL 15 is the host's (Debian 12).  17 and 18 run in Debian chroots made on first use
# under $GDPR_CHROOTS (Debian 13 for 17, the next Debian for 18), from the host's own mirror.

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

# Citus, for test/t/009_citus.pl.  Not packaged by Debian: built from its source archive, found
# in $GDPR_CITUS_ARCHIVE or in a shared/vendor directory beside the repository or above it.
# Prints the archive's path; fails when there is none.
gdpr_citus_archive() {
	local d a
	if [ -n "${GDPR_CITUS_ARCHIVE:-}" ] && [ -f "$GDPR_CITUS_ARCHIVE" ]; then
		echo "$GDPR_CITUS_ARCHIVE"; return 0
	fi
	for d in "$ROOT/.." "$ROOT/../.." /work; do
		for a in "$d"/shared/vendor/citus-*.tar.gz; do
			[ -f "$a" ] && { echo "$(cd "$(dirname "$a")" && pwd)/$(basename "$a")"; return 0; }
		done
	done
	return 1
}

# Installs Citus for $PG_CONFIG's PostgreSQL when it is missing and its archive is at hand (about a
# minute); says why not otherwise, and the Citus test skips.  Returns non-zero only when a build
# that should have worked failed.
gdpr_citus_install() {
	local archive src pkglibdir build
	pkglibdir=$("$PG_CONFIG" --pkglibdir)
	[ -e "$pkglibdir/citus.so" ] && return 0
	case $PGVER in
		15 | 16 | 17) ;;
		*) echo "Citus 13.2 supports PostgreSQL 15 to 17: the Citus test skips on $PGVER"; return 0 ;;
	esac
	archive=$(gdpr_citus_archive) ||
		{ echo "no Citus here and no citus-*.tar.gz (set GDPR_CITUS_ARCHIVE): the Citus test skips"; return 0; }
	echo "building Citus from $archive"
	local missing="" p
	for p in liblz4-dev libzstd-dev libcurl4-openssl-dev libkrb5-dev libicu-dev; do
		dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
	done
	if [ -n "$missing" ]; then
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null ||
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null; } ||
			{ echo "installing Citus's build dependencies failed"; return 1; }
	fi
	build=$(mktemp -d /tmp/gdpr-citus.XXXXXX)
	tar -C "$build" -xzf "$archive" || return 1
	src=$(echo "$build"/citus-*)
	# PostgreSQL 15.20 exports have_createdb_privilege(), which Citus 13.2 also defines (static
	# inline) for versions before 16: its copy goes where the server has one
	if grep -q have_createdb_privilege "$("$PG_CONFIG" --includedir-server)/commands/dbcommands.h"; then
		perl -0pi -e 's/\nstatic inline bool\nhave_createdb_privilege\(void\)\n\{.*?\n\}\n/\n/s' \
			"$src/src/include/pg_version_compat.h"
	fi
	(cd "$src" && ./configure PG_CONFIG="$PG_CONFIG" >"$build/configure.log" 2>&1 &&
		make -j2 >"$build/make.log" 2>&1 && make install >"$build/install.log" 2>&1) ||
		{ echo "building Citus failed: see $build"; return 1; }
	rm -rf "$build"
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

# gdpr_interleaved_tps <workload> <variant>...: pgbench (2 clients, loopback, $SECS s a run) of
# $WORK/<workload>_<variant>.sql, the variants taking turns within each of $ROUNDS rounds (so
# drift in the machine's speed hits all alike), a CHECKPOINT before each run.  Sets
# R[<workload>,<variant>] (an associative array the caller declares) to the median TPS.
gdpr_interleaved_tps() {
	local w=$1 r v out
	shift
	declare -A all
	for r in $(seq "$ROUNDS"); do
		for v in "$@"; do
			psql_ -c "CHECKPOINT" >/dev/null
			out=$(as_postgres "$PGBIN/pgbench" -n -h 127.0.0.1 -p "$PORT" -c 2 -j 2 -T "$SECS" \
				-f "$WORK/${w}_$v.sql" postgres 2>&1)
			all[$v]+="$(printf '%s\n' "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1) "
		done
	done
	for v in "$@"; do
		R[$w,$v]=$(printf '%s\n' ${all[$v]} | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
	done
}

GDPR_CHROOTS=${GDPR_CHROOTS:-/var/cache/gdpr-pg}

# The host's Debian mirror, as apt knows it.
gdpr_mirror() {
	local uri
	uri=$(sed -n 's/^URIs: *\([^ ]*debian\)\/*$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
	[ -n "$uri" ] || uri=$(awk '$1 == "deb" && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
	echo "${uri:-http://deb.debian.org/debian}"
}

# gdpr_pg_chroot <version>: prints the directory of a chroot with that PostgreSQL, its server
# headers, pgTAP and the TAP test modules; makes it when missing or broken (about a minute).
gdpr_pg_chroot() {
	local v=$1 dir=$GDPR_CHROOTS/$1 suite script
	case $v in
		17) suite=trixie ;;
		18) suite=forky ;;
		*) echo "PostgreSQL $v is not available here: choose 15, 17 or 18" >&2; return 1 ;;
	esac
	if [ ! -e "$dir/.gdpr-ready" ] || [ ! -x "$dir/usr/lib/postgresql/$v/bin/pg_config" ]; then
		echo "making a Debian $suite chroot with PostgreSQL $v in $dir" >&2
		gdpr_unmount_chroot "$dir"
		rm -rf --one-file-system "$dir"
		mkdir -p "$GDPR_CHROOTS"
		dpkg -s debootstrap >/dev/null 2>&1 ||
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; } || return 1
		script=/usr/share/debootstrap/scripts/$suite
		[ -e "$script" ] || script=/usr/share/debootstrap/scripts/sid		# a suite newer than debootstrap
		debootstrap --variant=minbase "$suite" "$dir" "$(gdpr_mirror)" "$script" >"$GDPR_CHROOTS/$v.log" 2>&1 ||
			{ echo "debootstrap failed: see $GDPR_CHROOTS/$v.log" >&2; return 1; }
		cp /etc/resolv.conf "$dir/etc/resolv.conf"
		gdpr_mount_chroot "$dir"
		# a suite under development has a short-lived Release file, and mirrors may serve an old one
		chroot "$dir" apt-get -o Acquire::Check-Valid-Until=false update -qq >>"$GDPR_CHROOTS/$v.log" 2>&1 &&
		chroot "$dir" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			"postgresql-$v" "postgresql-server-dev-$v" "postgresql-$v-pgtap" \
			libtap-parser-sourcehandler-pgtap-perl libipc-run-perl make gcc >>"$GDPR_CHROOTS/$v.log" 2>&1 ||
			{ echo "installing PostgreSQL $v failed: see $GDPR_CHROOTS/$v.log" >&2; return 1; }
		touch "$dir/.gdpr-ready"
	fi
	gdpr_mount_chroot "$dir"
	echo "$dir"
}

gdpr_mount_chroot() {
	mountpoint -q "$1/proc" || mount -t proc proc "$1/proc"
	mountpoint -q "$1/dev/shm" || mount -t tmpfs shm "$1/dev/shm"
}

gdpr_unmount_chroot() {
	mountpoint -q "$1/dev/shm" 2>/dev/null && umount "$1/dev/shm"
	mountpoint -q "$1/proc" 2>/dev/null && umount "$1/proc"
	return 0
}

# gdpr_in_chroot <version> <command> [args]: runs a command of this repository (such as
# test/run) against PostgreSQL <version>, on a copy of the tree in that version's chroot.
gdpr_in_chroot() {
	local v=$1 dir archive
	shift
	dir=$(gdpr_pg_chroot "$v") || return 1
	rm -rf "$dir/build"
	mkdir -p "$dir/build"
	tar -C "$ROOT" --exclude=.git -cf - . | tar -C "$dir/build" -xf -
	local citus=""
	if archive=$(gdpr_citus_archive); then
		cp "$archive" "$dir/citus.tar.gz" && citus=/citus.tar.gz
	fi
	chroot "$dir" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 PGVER="$v" \
		GDPR_CITUS_ARCHIVE="$citus" \
		bash -c 'cd /build && "$@"' bash "$@"
}
