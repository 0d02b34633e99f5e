// Live updates by polling: EventSource cannot send an Authorization header, and the token must
// not travel in a URL. The open view is read again about every 1.2 s; after an error the wait
// doubles (2 s, 4 s … 30 s); while the tab is hidden nothing is asked, and it resumes at once
// when the tab is shown again.

const INTERVAL_MS = 1200;
const FIRST_BACKOFF_MS = 2000;
const MAX_BACKOFF_MS = 30000;

export class Poller {
  /** onState({state: "live"|"paused"|"retrying"|"stopped", at?, waitMs?}) tells the header. */
  constructor(onState) {
    this.onState = onState;
    this.task = null;
    this.timer = null;
    this.controller = null;
    this.generation = 0;
    this.backoff = 0;
    document.addEventListener("visibilitychange", () => this.visibilityChanged());
  }

  /** Poll `task(signal)` from now on, in place of whatever was polled before. */
  start(task) {
    this.stop();
    this.task = task;
    this.backoff = 0;
    this.run();
  }

  stop() {
    this.generation += 1;
    clearTimeout(this.timer);
    this.timer = null;
    if (this.controller) this.controller.abort();
    this.controller = null;
    this.task = null;
    this.onState({ state: "stopped" });
  }

  /** Read the view again now (after an action), keeping the schedule's state. */
  now() {
    if (!this.task) return;
    clearTimeout(this.timer);
    this.timer = null;
    if (this.controller) this.controller.abort();
    this.run();
  }

  visibilityChanged() {
    if (!this.task) return;
    if (document.hidden) {
      clearTimeout(this.timer);
      this.timer = null;
      this.onState({ state: "paused" });
    } else {
      this.backoff = 0;
      this.now();
    }
  }

  async run() {
    if (!this.task) return;
    if (document.hidden) {
      this.onState({ state: "paused" });
      return;
    }
    const generation = this.generation;
    const controller = new AbortController();
    this.controller = controller;
    let wait = INTERVAL_MS;
    try {
      await this.task(controller.signal);
      if (generation !== this.generation || controller.signal.aborted) return;
      this.backoff = 0;
      this.onState({ state: "live", at: new Date() });
    } catch (error) {
      if (generation !== this.generation || controller.signal.aborted) return;
      if (error && error.name === "AbortError") return;
      if (error && error.fatal) return; // the view stopped polling (signed out, gone)
      this.backoff = this.backoff ? Math.min(MAX_BACKOFF_MS, this.backoff * 2) : FIRST_BACKOFF_MS;
      wait = this.backoff;
      this.onState({ state: "retrying", waitMs: wait, error });
    }
    if (generation !== this.generation || document.hidden) return;
    this.controller = null;
    this.timer = setTimeout(() => this.run(), wait);
  }
}
