getent group purgewatch >/dev/null || groupadd --system purgewatch
getent passwd purgewatch >/dev/null || useradd --system --gid purgewatch --no-create-home \
    --home-dir /var/lib/purgewatch --shell /sbin/nologin --comment "purgewatch daemon" purgewatch
exit 0
