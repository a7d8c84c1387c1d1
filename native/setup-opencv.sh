#!/usr/bin/env bash
# npm run setup:opencv — optional OpenCV path, never part of the default install.
#
# Installs Debian's OpenCV (libopencv-dev, ~870 MB) and builds @u4/opencv4nodejs against it
# (OPENCV4NODEJS_DISABLE_AUTOBUILD=1: no OpenCV download and source build). The addon goes to
# its own folder, native/build/opencv, not the project's node_modules, so that a later
# `npm install` (which prunes packages missing from package.json) does not remove it;
# native/opencv.ts loads it from there. With it, bench:preprocess adds blobFromImage.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! pkg-config --exists opencv4 2>/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends libopencv-dev pkg-config
fi

export OPENCV4NODEJS_DISABLE_AUTOBUILD=1
export OPENCV_INCLUDE_DIR="$(pkg-config --cflags-only-I opencv4 | sed -e "s/^ *-I//" -e "s/ .*//")"
export OPENCV_LIB_DIR="$(pkg-config --variable=libdir opencv4)"
export OPENCV_BIN_DIR=/usr/bin
prefix=native/build/opencv
mkdir -p "$prefix"
[ -f "$prefix/package.json" ] || cat > "$prefix/package.json" <<'JSON'
{ "private": true, "description": "Optional OpenCV binding, built by npm run setup:opencv", "allowScripts": { "@u4/opencv4nodejs": true } }
JSON
echo "setup:opencv: building @u4/opencv4nodejs against OpenCV $(pkg-config --modversion opencv4) into $prefix"
npm install --prefix "$prefix" --no-audit --no-fund --foreground-scripts @u4/opencv4nodejs
node -e "const cv = require('./$prefix/node_modules/@u4/opencv4nodejs'); console.log('setup:opencv: opencv4nodejs loads, OpenCV ' + cv.version.major + '.' + cv.version.minor + '.' + cv.version.revision)"
