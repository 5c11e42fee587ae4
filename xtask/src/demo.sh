#!/bin/sh
# The cowtrace demo, run as root inside the --docker guest: a multi-layer
# image, a container named nginx and a bystander, cowtrace watching nginx.
set -e
ctx=$(mktemp -d)
cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM cowtrace/busybox:latest
RUN mkdir -p /etc/nginx/conf.d /usr/share/nginx/html /var/log/nginx \
 && printf 'worker_processes 1;\nevents {}\n' > /etc/nginx/nginx.conf \
 && for i in $(seq 1 40); do echo "<h1>page $i</h1>" > /usr/share/nginx/html/page$i.html; done
RUN dd if=/dev/urandom of=/var/log/nginx/archive.log bs=1M count=16 2>/dev/null \
 && echo 'server { listen 80; }' > /etc/nginx/conf.d/default.conf
DOCKERFILE
echo "demo: building a 3-layer image (offline)"
docker build -q --network none -t cowtrace/demo-web "$ctx" >/dev/null
docker run -d --name nginx --network none cowtrace/demo-web sleep 3600 >/dev/null
docker run -d --name bystander --network none cowtrace/demo-web sleep 3600 >/dev/null
echo "demo: starting: cowtrace --container nginx --interval 5s --json /out/cowtrace.json"
cowtrace --container nginx --interval 5s --json /out/cowtrace.json 2>/tmp/cowtrace.err &
ct=$!
i=0
until grep -q '^tracing' /tmp/cowtrace.err 2>/dev/null; do
  i=$((i+1)); [ $i -lt 600 ] || { cat /tmp/cowtrace.err; exit 1; }
  kill -0 $ct 2>/dev/null || { cat /tmp/cowtrace.err; exit 1; }
  sleep 0.2
done
cat /tmp/cowtrace.err >&2
tail -n0 -f /tmp/cowtrace.err >&2 &
tailer=$!
echo "demo: nginx edits its config and reloads"
docker exec nginx sh -c 'echo "# tuned" >> /etc/nginx/nginx.conf; echo "gzip on;" >> /etc/nginx/conf.d/default.conf'
echo "demo: an entrypoint-style chown -R over an image directory"
docker exec nginx chown -R 101:101 /usr/share/nginx/html
echo "demo: appending to a 16 MiB log that came from the image, then normal logging"
docker exec nginx sh -c 'echo rotated >> /var/log/nginx/archive.log; for i in $(seq 1 500); do echo "GET /page$i.html 200" >> /var/log/nginx/access.log; done'
echo "demo: deleting image files and replacing an image directory"
docker exec nginx sh -c 'rm /usr/share/nginx/html/page1.html /usr/share/nginx/html/page2.html; rm -r /etc/nginx/conf.d; mkdir /etc/nginx/conf.d'
echo "demo: the bystander container writes too (cowtrace must not show it)"
docker exec bystander sh -c 'echo "# other" >> /etc/nginx/nginx.conf; rm /usr/share/nginx/html/page3.html'
sleep 1
kill -INT $ct
wait $ct
sleep 0.5
kill $tailer 2>/dev/null || true
