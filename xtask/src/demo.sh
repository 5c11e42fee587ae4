#!/bin/sh
# The cowtrace demo, run as root inside the --docker guest: a real nginx
# (Debian's package) in a multi-layer image, a bystander container, and
# `cowtrace --container nginx` watching what nginx's life costs.
#
# `demo.sh improved` runs the same life with the two usual image fixes:
# ownership set at build time (the entrypoint's chown then finds nothing to
# change) and a volume for the log directory. `demo.sh image` only builds
# the plain image (cowtrace/demo-nginx), for the tests that measure its
# `chown -R` elsewhere (podman with and without metacopy=on).
set -e
variant=${1:-plain}
ctx=$(mktemp -d)
mkdir -p "$ctx/conf"
cat > "$ctx/conf/site.conf" <<'CONF'
server {
    listen 80 default_server;
    root /usr/share/nginx/html;
    access_log /var/log/nginx/access.log;
}
CONF
cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM cowtrace/debian-nginx:bookworm
RUN rm -f /etc/nginx/sites-enabled/default \
 && mkdir -p /var/log/nginx \
 && mkdir -p /usr/share/nginx/html/assets \
 && for i in $(seq 1 40); do echo "<h1>page $i</h1>" > /usr/share/nginx/html/page$i.html; done \
 && for i in $(seq 1 20); do head -c 65536 /dev/urandom > /usr/share/nginx/html/assets/img$i.bin; done \
 && mkdir -p /usr/share/GeoIP && head -c 4194304 /dev/urandom > /usr/share/GeoIP/city.mmdb
COPY conf/site.conf /etc/nginx/conf.d/site.conf
RUN head -c 16777216 /dev/urandom > /var/log/nginx/archive.log
DOCKERFILE
if [ "$variant" = improved ]; then
  cat >> "$ctx/Dockerfile" <<'DOCKERFILE'
RUN chown -R www-data:www-data /usr/share/nginx/html
VOLUME /var/log/nginx
DOCKERFILE
fi
echo "demo: building an nginx image with 3 layers on Debian's nginx (offline), $variant"
docker build -q --network none -t cowtrace/demo-nginx "$ctx" >/dev/null
[ "$variant" != image ] || exit 0
docker run -d --name nginx --network none cowtrace/demo-nginx nginx -g 'daemon off;' >/dev/null
docker run -d --name bystander --network none cowtrace/demo-nginx nginx -g 'daemon off;' >/dev/null
echo "demo: starting: cowtrace --container nginx --interval 5s --json /out/cowtrace.json --events /out/events.ndjson"
cowtrace --container nginx --interval 5s --json /out/cowtrace.json --events /out/events.ndjson 2>/tmp/cowtrace.err &
ct=$!
i=0
until grep -q '^tracing' /tmp/cowtrace.err 2>/dev/null; do
  i=$((i+1)); [ $i -lt 600 ] || { cat /tmp/cowtrace.err; exit 1; }
  kill -0 $ct 2>/dev/null || { cat /tmp/cowtrace.err; exit 1; }
  sleep 0.2
done
# Everything cowtrace writes, until it has exited and its last lines (the
# summary, per-layer table and advice) are out.
tail --pid=$ct -c +1 -f /tmp/cowtrace.err >&2 &
tailer=$!
echo "demo: nginx serves 200 requests (it logs each one)"
docker exec nginx sh -c 'for i in $(seq 1 200); do busybox wget -q -O /dev/null http://127.0.0.1/page$((i % 40 + 1)).html; done'
echo "demo: a config edit and a reload"
docker exec nginx sh -c 'echo "# tuned by the demo" >> /etc/nginx/nginx.conf && nginx -s reload'
echo "demo: an entrypoint-style chown -R over an image directory (only what is not owned yet)"
docker exec nginx sh -c 'find /usr/share/nginx/html ! -user www-data -exec chown www-data:www-data {} +'
echo "demo: appending to a 16 MiB log that came from the image"
docker exec nginx sh -c 'echo rotated >> /var/log/nginx/archive.log'
echo "demo: stamping 8 bytes into a 4 MiB data file from the image, in place"
docker exec nginx sh -c 'printf 20261207 | dd of=/usr/share/GeoIP/city.mmdb bs=1 seek=64 conv=notrunc status=none'
echo "demo: deleting image files and replacing an image directory"
docker exec nginx sh -c 'rm /usr/share/nginx/html/page1.html /usr/share/nginx/html/page2.html; rm -r /usr/share/nginx/html/assets; mkdir /usr/share/nginx/html/assets'
echo "demo: the bystander container does the same (cowtrace must not show it)"
docker exec bystander sh -c 'echo "# other" >> /etc/nginx/nginx.conf; rm /usr/share/nginx/html/page3.html'
# One interval report (5 s) after the last change: the size-based advice
# it checks in the background is then in the final report even if the
# final check runs out of its time.
sleep 6
kill -INT $ct
wait $ct
wait $tailer
