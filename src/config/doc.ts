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
  host: string;
  port?: number | string;
  maxc?: number;
  weight?: number;
  enabled?: boolean;
  health?: HealthDoc;
}

export interface GroupDoc {
  policy?: string;
  health?: HealthDoc;
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
  queue?: { max?: number; timeout?: DurationValue };
  groups: GroupDoc[];
}

export interface ConfigDoc {
  global?: { drain_timeout?: DurationValue; log_format?: string; access_log?: boolean };
  control?: {
    listen?: AddressValue;
    socket?: string;
    admin?: boolean;
    allow?: string[];
    idle_timeout?: DurationValue;
  };
  defaults?: { connect_timeout?: DurationValue; idle_timeout?: DurationValue };
  listeners: Record<string, ListenerDoc>;
}
