# The brume node image, built with no registry: FROM scratch around brume's static binary, criu
# (built from source by scripts/install-criu.sh, dynamically linked, so it comes with the shared
# libraries `ldd` lists), sh and cat (a CRIU task's output drain), tar and gzip (CRIU carries
# a tmpfs's contents through them). Do not `docker build` this file by hand: scripts/node-image.sh assembles
# the root file system it copies (target/node-image/rootfs) and builds the image, tagged
# brume-node:<hash of its contents> and brume-node:latest. See docs/testnet.md.
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/bin
ENTRYPOINT ["/usr/local/bin/brume"]
CMD ["--help"]
