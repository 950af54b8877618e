# The brume node image. There is no registry on brume's machines, so the image is built FROM
# scratch around a statically linked binary (glibc, crt-static):
#   RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p brume --target x86_64-unknown-linux-gnu
#   docker build -t brume-node .
FROM scratch
COPY target/x86_64-unknown-linux-gnu/release/brume /brume
ENTRYPOINT ["/brume"]
CMD ["--help"]
