"""Free TCP ports on loopback, for the servers the project starts on this machine: a
local cluster's daemons, a Trainer's workers, the tests' servers."""
import socket
from typing import List


def free_ports(count: int) -> List[int]:
  """`count` different TCP ports on loopback that nothing listens on now (the OS's
  picks)."""
  sockets = []
  try:
    for _ in range(count):
      s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
      # Held until all are picked, so that the OS hands out different ones.
      s.bind(("127.0.0.1", 0))
      sockets.append(s)
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def free_port() -> int:
  """A TCP port on loopback that nothing listens on now."""
  return free_ports(1)[0]
