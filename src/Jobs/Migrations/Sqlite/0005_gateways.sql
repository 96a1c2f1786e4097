-- Live gateways: each replica stamps its row every few seconds, so every replica knows how many
-- share the per-key request rate and takes its part of it (docs/gateway.md, "Rate limits").
CREATE TABLE gateways (
    gateway_id TEXT NOT NULL PRIMARY KEY,
    seen_ms INTEGER NOT NULL
);
CREATE INDEX gateways_seen ON gateways (seen_ms);
