#!/usr/bin/env bash
# npm run setup:opencv — optional OpenCV path, never part of the default install.
#
# Installs Debian's OpenCV (libopencv-dev, ~870 MB) and builds @u4/opencv4nodejs against it
# (OPENCV4NODEJS_DISABLE_AUTOBUILD=1: no OpenCV download and source build; about 4 minutes).
# With it, bench:preprocess adds blobFromImage and the device can read frames through
# cv.VideoCapture. It is installed with --no-save, so a later plain `npm install` prunes it:
# run this script again afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! pkg-config --exists opencv4 2>/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends libopencv-dev pkg-config
fi

export OPENCV4NODEJS_DISABLE_AUTOBUILD=1
export OPENCV_INCLUDE_DIR="$(pkg-config --variable=includedir opencv4)/opencv4"
export OPENCV_LIB_DIR="$(pkg-config --variable=libdir opencv4)"
export OPENCV_BIN_DIR=/usr/bin
echo "setup:opencv: building @u4/opencv4nodejs against OpenCV $(pkg-config --modversion opencv4) ($OPENCV_LIB_DIR)"
npm install --no-save --no-audit --no-fund --foreground-scripts @u4/opencv4nodejs
node -e "const cv = require('@u4/opencv4nodejs'); console.log('setup:opencv: opencv4nodejs loads, OpenCV ' + cv.version.major + '.' + cv.version.minor + '.' + cv.version.revision)"
