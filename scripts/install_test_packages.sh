#!/usr/bin/env bash
# The system packages some tests need, from Debian's or Ubuntu's archive (run as root, or with sudo at hand):
# headless Chromium for the web page test (Playwright never downloads a browser here), and Orthanc with its
# DICOMweb and GDCM (JPEG 2000) plugins for the PACS tests. Without them `make test` skips those tests and
# says why. `.ci/run` and `make test-packages` call this script.
set -euo pipefail
packages=()
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  packages+=(chromium)
fi
if ! command -v Orthanc >/dev/null 2>&1 || [ ! -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then
  packages+=(orthanc orthanc-dicomweb orthanc-gdcm)
fi
if [ ${#packages[@]} -eq 0 ]; then
  echo "chromium and orthanc (with its DICOMweb plugin) are installed"
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "installing ${packages[*]} with apt-get"
$sudo apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"
