#!/usr/bin/env bash
# Holds a PM-QoS CPU latency request of 0 µs until killed: idle CPUs then poll instead of
# entering deep idle states, so timer and socket wake-ups arrive on time. The request lasts only
# while the file stays open, so run this in the background for the benchmark's duration:
#
#   sudo tuning/hold-cpu-dma-latency.sh & holder=$!; parley bench ...; sudo kill $holder
exec python3 -c '
import os, signal, struct
fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
os.write(fd, struct.pack("i", 0))
print("holding /dev/cpu_dma_latency = 0 (pid %d); kill to release" % os.getpid(), flush=True)
signal.pause()
'
