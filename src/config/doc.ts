// The config document: what a TOML file parses to (and what balance's command line is turned into).
// Shapes follow schemas/lb.schema.json; after validation the defaults are filled in.

export type DurationValue = string | number;
export type AddressValue = string | number;

export interface HealthDoc {
  interval?: DurationValue;
  timeout?: DurationValue;
  rise?: number;
  fall?: number;
  send?: string;
  expect?: string;
  port?: number | string;
  enabled?: boolean;
}

export interface BackendDoc {
  name?: string;
  /** Exactly one of host and srv (the schema says so). */
  host?: string;
  srv?: string;
  port?: number | string;
  maxc?: number;
  weight?: number;
  enabled?: boolean;
  health?: HealthDoc;
  send_proxy?: string;
  check_send_proxy?: boolean;
}

export interface GroupDoc {
  policy?: string;
  health?: HealthDoc;
  send_proxy?: string;
  check_send_proxy?: boolean;
  backends: (string | BackendDoc)[];
}

export interface ListenerDoc {
  listen: AddressValue;
  source?: string;
  hash_failover?: boolean;
  autodisable?: boolean;
  packet_dump?: string;
  packet_dump_file?: string;
  connect_timeout?: DurationValue;
  idle_timeout?: DurationValue;
  accept_proxy?: boolean;
  accept_proxy_timeout?: DurationValue;
  backlog?: number;
  queue?: { max?: number; timeout?: DurationValue };
  groups: GroupDoc[];
}

export interface ConfigDoc {
  global?: {
    drain_timeout?: DurationValue;
    log_format?: string;
    access_log?: boolean;
    workers?: number | 'auto';
    maxconn?: number;
    splice?: string;
    log_level?: string;
    state_file?: string;
    dns?: { servers?: string[]; timeout?: DurationValue; hold_valid?: DurationValue; min_ttl?: DurationValue; max_ttl?: DurationValue };
  };
  control?: {
    listen?: AddressValue;
    socket?: string;
    admin?: boolean;
    level?: string;
    socket_level?: string;
    token_file?: string;
    allow?: string[];
    idle_timeout?: DurationValue;
    http?: AddressValue;
    http_level?: string;
  };
  defaults?: { connect_timeout?: DurationValue; idle_timeout?: DurationValue };
  listeners: Record<string, ListenerDoc>;
}
