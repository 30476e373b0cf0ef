install -d -o purgewatch -g purgewatch -m 0750 /var/lib/purgewatch
chgrp purgewatch /etc/purgewatch/purgewatch.toml 2>/dev/null || true
systemctl daemon-reload >/dev/null 2>&1 || true
# Upgrade: restart a running daemon so the new binary (and its migrations) take over.
if [ "$1" -ge 2 ]; then systemctl try-restart purgewatch.service >/dev/null 2>&1 || true; fi
exit 0
