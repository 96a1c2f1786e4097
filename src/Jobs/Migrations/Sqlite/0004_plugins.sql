-- The plugin catalog: what each analysis worker can run, published at its start, on a hot
-- reload and every minute; gateways list and validate from the rows of recently seen workers.
CREATE TABLE plugins (
    worker_id TEXT NOT NULL,
    plugin_id TEXT NOT NULL,
    folder TEXT NOT NULL,
    loaded INTEGER NOT NULL,
    error TEXT NULL,
    manifest_json TEXT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (worker_id, plugin_id)
);
CREATE INDEX plugins_updated ON plugins (updated_ms);
