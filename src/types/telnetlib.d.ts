// telnetlib ships no type declarations; this covers the part of its API the control adapter uses.
declare module 'telnetlib' {
  import type { Server, ServerOpts } from 'node:net';
  import type { EventEmitter } from 'node:events';

  export interface TelnetServerOptions extends ServerOpts {
    localOptions?: number[];
    remoteOptions?: number[];
    receiveBufferMax?: number;
    subnegotiationBufferMax?: number;
  }

  export interface TelnetSocket extends EventEmitter {
    write(data: string | Uint8Array, cb?: () => void): boolean;
    end(data?: string): void;
    destroy(): void;
    pause(): void;
    resume(): void;
  }

  export const options: Record<string, number>;
  export const constants: {
    commands: Record<'IAC' | 'SB' | 'SE' | 'WILL' | 'WONT' | 'DO' | 'DONT' | 'NOP' | 'GA', number>;
  };
  export function createServer(
    options: TelnetServerOptions,
    listener: (socket: TelnetSocket) => void,
  ): Server;
}
