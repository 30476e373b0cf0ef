# Last removal (not an upgrade): stop and disable the service.
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now purgewatch.service >/dev/null 2>&1 || true
fi
exit 0
