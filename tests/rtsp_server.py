#!/usr/bin/python3
"""A real RTSP server for the RTSP source's tests (tests/rtsp.rs), and for trying the source by hand.

Each mount serves one still image, looped by ffmpeg into a clip of the chosen codec, through
GStreamer's gst-rtsp-server (one pipeline per client, from the clip's start, paced in real time):

    /usr/bin/python3 tests/rtsp_server.py --port 8554 \
        /dent=h264:models/samples/dent/cast_metal_dent.png \
        /ok=mjpeg:models/samples/ok/cast_metal_ok.png
    # rtsp://127.0.0.1:8554/dent  (H.264)   rtsp://127.0.0.1:8554/ok  (MJPEG, RTP/JPEG)

Codecs: mjpeg, h264 (x264's default High profile with B-frames, as cameras send it), h264-baseline,
h265 (which the daemon refuses: it decodes H.264 and MJPEG). --user/--password-file make every
mount require those credentials (HTTP Basic). --size WxH scales the image first. The encoded clips
go to a temporary folder removed at exit (or to --dir, kept and reused); nothing binary is committed. Prints `ready <port>` on
stdout when it listens. Needs Debian's python3-gi, gir1.2-gst-rtsp-server-1.0,
gstreamer1.0-plugins-good (RTP payloaders, Matroska), gstreamer1.0-plugins-bad (H.264/H.265/JPEG
parsers) and ffmpeg.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

# ffmpeg arguments per codec, and the GStreamer elements between the Matroska demuxer and the
# RTP payloader (which must be named pay0).
CODECS = {
    # RTP/JPEG (RFC 2435) carries no Huffman tables: the receiver rebuilds the standard ones, so
    # the encoder must use them (ffmpeg optimizes its tables unless told not to).
    "mjpeg": (
        ["-c:v", "mjpeg", "-q:v", "3", "-pix_fmt", "yuvj420p", "-huffman", "default"],
        "jpegparse ! rtpjpegpay name=pay0 pt=26",
    ),
    "h264": (
        ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "10", "-bf", "2"],
        "h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1",
    ),
    "h264-baseline": (
        ["-c:v", "libx264", "-profile:v", "baseline", "-pix_fmt", "yuv420p", "-g", "10"],
        "h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1",
    ),
    "h265": (
        ["-c:v", "libx265", "-pix_fmt", "yuv420p", "-x265-params", "log-level=error"],
        "h265parse ! rtph265pay name=pay0 pt=96 config-interval=-1",
    ),
}


def encode(png, codec, out, seconds, fps, size):
    """Loops the still `png` for `seconds` at `fps` into the Matroska clip `out`."""
    args, _ = CODECS[codec]
    scale = ["-vf", "scale=%s:%s" % tuple(size.split("x"))] if size else []
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-loop", "1", "-framerate", str(fps),
           "-i", png, "-t", str(seconds), *scale, *args, out]
    subprocess.run(cmd, check=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--fps", type=int, default=10)
    p.add_argument("--seconds", type=int, default=180, help="length of each clip (a client that stays longer gets the end of the stream)")
    p.add_argument("--size", help="scale the images to WxH")
    p.add_argument("--dir", help="encode the clips here and keep them; a clip already there is served as it is")
    p.add_argument("--user")
    p.add_argument("--password-file")
    p.add_argument("mounts", nargs="+", metavar="/PATH=CODEC:IMAGE")
    a = p.parse_args()

    Gst.init(None)
    tmp = a.dir or tempfile.mkdtemp(prefix="inspectd-rtsp-")
    os.makedirs(tmp, exist_ok=True)
    try:
        server = GstRtspServer.RTSPServer()
        server.set_address("127.0.0.1")
        server.set_service(str(a.port))
        mounts = server.get_mount_points()
        for i, m in enumerate(a.mounts):
            path, _, spec = m.partition("=")
            codec, _, png = spec.partition(":")
            if not path.startswith("/") or codec not in CODECS or not png:
                sys.exit("bad mount %r: want /PATH=CODEC:IMAGE, CODEC one of %s" % (m, ", ".join(CODECS)))
            clip = os.path.join(tmp, "%d-%s.mkv" % (i, codec))
            if not os.path.exists(clip):
                encode(png, codec, clip + ".part.mkv", a.seconds, a.fps, a.size)
                os.rename(clip + ".part.mkv", clip)
            factory = GstRtspServer.RTSPMediaFactory()
            factory.set_launch("( filesrc location=%s ! matroskademux ! %s )" % (clip, CODECS[codec][1]))
            factory.set_shared(False)
            if a.user:
                permissions = GstRtspServer.RTSPPermissions()
                permissions.add_permission_for_role("user", "media.factory.access", True)
                permissions.add_permission_for_role("user", "media.factory.construct", True)
                factory.set_permissions(permissions)
            mounts.add_factory(path, factory)
        if a.user:
            with open(a.password_file) as f:
                password = f.read().rstrip("\r\n")
            auth = GstRtspServer.RTSPAuth()
            token = GstRtspServer.RTSPToken()
            token.set_string("media.factory.role", "user")
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(a.user, password), token)
            server.set_auth(auth)
        if server.attach(None) == 0:
            sys.exit("cannot listen on 127.0.0.1:%d" % a.port)
        print("ready", a.port, flush=True)
        GLib.MainLoop().run()
    finally:
        if not a.dir:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
