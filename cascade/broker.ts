/**
 * The embedded MQTT broker (aedes) for `cascade demo` and tests: MQTT 3.1.1 only and no shared
 * subscriptions (`$share/...` receives nothing on aedes), so it serves one gateway. Replicas need
 * a real broker (Mosquitto, EMQX, HiveMQ). TCP_NODELAY is set on every accepted socket.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { Aedes } from 'aedes';

/** A running embedded broker. */
export interface EmbeddedBroker {
  /** mqtt://127.0.0.1:<port> */
  readonly url: string;
  readonly port: number;
  readonly broker: Aedes;
  /** Stops accepting, disconnects clients and closes the broker. Safe to call twice. */
  close(): Promise<void>;
}

/**
 * Starts aedes on a TCP port.
 * @param opts.port 0 (default) picks a free port.
 * @param opts.host default 127.0.0.1.
 */
export async function startEmbeddedBroker(
  opts: { port?: number; host?: string } = {},
): Promise<EmbeddedBroker> {
  const host = opts.host ?? '127.0.0.1';
  const broker = await Aedes.createBroker();
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    socket.setNoDelay(true);
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    broker.handle(socket);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('embedded broker: no TCP address');
  let closing: Promise<void> | undefined;
  return {
    url: `mqtt://${host}:${address.port}`,
    port: address.port,
    broker,
    close() {
      closing ??= (async () => {
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        for (const s of sockets) s.destroy();
        await new Promise<void>((resolve) => broker.close(() => resolve()));
        await closed;
      })();
      return closing;
    },
  };
}
