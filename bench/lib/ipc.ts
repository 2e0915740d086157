// Request/response over Node's fork() IPC channel, for the bench's helper processes (backends, load
// generators).
//
// Helpers are separate processes rather than code in the orchestrator so that the proxy under test, the
// backends and the load generator each have their own event loop, GC and file-descriptor limit; the
// orchestrator itself stays idle while a figure is measured. Every call carries a deadline, and a helper
// exits when its parent goes away (the IPC channel closes), so nothing outlives a crashed run.

import { fork, type ChildProcess } from 'node:child_process';

interface Request {
  id: number;
  op: string;
  args: unknown;
}

interface Reply {
  id: number;
  ok: boolean;
  value?: unknown;
  error?: string;
}

export class Helper {
  readonly label: string;
  readonly child: ChildProcess;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  private exited = false;
  private stderrTail = '';

  private constructor(label: string, child: ChildProcess) {
    this.label = label;
    this.child = child;
    child.on('message', (m: Reply) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      clearTimeout(p.timer);
      if (m.ok) p.resolve(m.value);
      else p.reject(new Error(`${this.label}: ${m.error}`));
    });
    // Keep the last few hundred bytes of stderr for error messages; the rest is not interesting.
    child.stderr?.on('data', (d: Buffer) => {
      this.stderrTail = (this.stderrTail + d.toString()).slice(-600);
    });
    child.on('exit', (code, signal) => {
      this.exited = true;
      const why = new Error(`${this.label} exited (code ${code}, signal ${signal}) ${this.stderrTail.trim()}`.trim());
      for (const p of this.pending.values()) {
        clearTimeout(p.timer);
        p.reject(why);
      }
      this.pending.clear();
    });
  }

  /** Starts `file` (a module that calls `serveRequests`) under this Node, with no inherited exec flags. */
  static start(label: string, file: string, args: string[] = []): Helper {
    const child = fork(file, args, { execArgv: [], stdio: ['ignore', 'inherit', 'pipe', 'ipc'] });
    return new Helper(label, child);
  }

  get pid(): number {
    return this.child.pid ?? 0;
  }

  call<T>(op: string, args: unknown, timeoutMs: number): Promise<T> {
    if (this.exited) return Promise.reject(new Error(`${this.label} is not running`));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${this.label}: ${op} did not answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer });
      this.child.send({ id, op, args } satisfies Request);
    });
  }

  /** Closes the channel (the helper exits by itself) and kills it if it has not gone within graceMs. */
  async stop(graceMs = 2000): Promise<void> {
    if (this.exited) return;
    const gone = new Promise<void>((r) => this.child.once('exit', () => r()));
    if (this.child.connected) this.child.disconnect();
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await gone;
    clearTimeout(timer);
  }

  kill(): void {
    if (!this.exited) this.child.kill('SIGKILL');
  }
}

/** Child side: answers each request with its handler's result; exits when the parent disconnects. */
export function serveRequests(handlers: Record<string, (args: any) => unknown>): void {
  process.on('disconnect', () => process.exit(0));
  process.on('message', (m: Request) => {
    const h = handlers[m.op];
    const reply = (r: Omit<Reply, 'id'>): void => {
      if (process.connected) process.send!({ id: m.id, ...r } satisfies Reply);
    };
    if (!h) {
      reply({ ok: false, error: `unknown op ${m.op}` });
      return;
    }
    Promise.resolve()
      .then(() => h(m.args))
      .then(
        (value) => reply({ ok: true, value }),
        (err: Error) => reply({ ok: false, error: err?.message ?? String(err) }),
      );
  });
}
