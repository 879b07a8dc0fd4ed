#!/bin/sh
# Convenience wrapper: deploy/local-kafka/kafka.sh start|stop|status|fetch [--home DIR]
# Same as `sendonce dev kafka ...` using the repository's virtualenv.
exec "$(dirname "$0")/../../.venv/bin/sendonce" dev kafka "$@"
