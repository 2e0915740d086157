// Signals from the first instant: lb installs its SIGHUP/SIGTERM/SIGINT handlers before it binds anything,
// because a supervisor (or an operator's script) may signal as soon as the port shows LISTEN, and Node's
// default for these signals is to end the process, cutting every relayed connection. Until start-up
// completes a signal is only held; then any number of held HUPs become one reload, and a held TERM or INT
// stops lb as usual (draining), winning over a held HUP.

export type StopSignal = 'SIGTERM' | 'SIGINT';

export interface SignalActions {
  stop(signal: StopSignal): void;
  reload(): void;
}

export class SignalGate {
  private actions: SignalActions | null = null;
  private heldStop: StopSignal | null = null;
  private heldReload = false;

  /** A signal arrived: acted on at once once open, else held. */
  signal(name: 'SIGHUP' | StopSignal): void {
    if (this.actions === null) {
      if (name === 'SIGHUP') this.heldReload = true;
      else this.heldStop ??= name;
      return;
    }
    if (name === 'SIGHUP') this.actions.reload();
    else this.actions.stop(name);
  }

  /** Start-up completed: from now on signals act, and what was held acts now (a stop wins over a reload). */
  open(actions: SignalActions): void {
    this.actions = actions;
    const stop = this.heldStop;
    const reload = this.heldReload;
    this.heldStop = null;
    this.heldReload = false;
    if (stop !== null) actions.stop(stop);
    else if (reload) actions.reload();
  }
}
