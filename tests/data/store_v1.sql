-- A store written by sweeper at schema version 1 (sqlite3 .dump), for the upgrade test.
BEGIN TRANSACTION;
CREATE TABLE metrics (
	trial_id INTEGER NOT NULL, 
	seq BIGINT NOT NULL, 
	name TEXT NOT NULL, 
	step BIGINT NOT NULL, 
	value DOUBLE, 
	time DOUBLE NOT NULL, 
	CONSTRAINT pk_metrics PRIMARY KEY (trial_id, seq, name), 
	FOREIGN KEY(trial_id) REFERENCES trials (id) ON DELETE CASCADE
);
INSERT INTO "metrics" VALUES(1,0,'loss',0,0.25,3.0);
INSERT INTO "metrics" VALUES(1,1,'loss',1,0.125,4.0);
CREATE TABLE sweeper_meta (
	"key" VARCHAR(64) NOT NULL, 
	value TEXT NOT NULL, 
	PRIMARY KEY ("key")
);
INSERT INTO "sweeper_meta" VALUES('schema_version','1');
CREATE TABLE sweeps (
	id VARCHAR(8) NOT NULL, 
	name TEXT, 
	method VARCHAR(64) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	spec TEXT NOT NULL, 
	seed BIGINT NOT NULL, 
	created_at DOUBLE NOT NULL, 
	updated_at DOUBLE NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "sweeps" VALUES('mwbeliwt','old','random','running','{"method": "random", "parameters": {"lr": {"min": 0.0, "max": 1.0}}}',7,1.0,1.0);
CREATE TABLE trials (
	id INTEGER NOT NULL, 
	sweep_id VARCHAR(8) NOT NULL, 
	number INTEGER NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	config TEXT NOT NULL, 
	config_key TEXT NOT NULL, 
	retry_of INTEGER, 
	agent TEXT, 
	host TEXT, 
	lease_id TEXT, 
	lease_expires_at DOUBLE, 
	created_at DOUBLE NOT NULL, 
	ended_at DOUBLE, 
	exit_code INTEGER, 
	stderr_tail TEXT, 
	stop_reason TEXT, 
	stop_requested TEXT, 
	summary TEXT NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_trials_sweep_number UNIQUE (sweep_id, number), 
	FOREIGN KEY(sweep_id) REFERENCES sweeps (id) ON DELETE CASCADE
);
INSERT INTO "trials" VALUES(1,'mwbeliwt',1,'finished','{"lr": 0.5}','{"lr":0.5}',NULL,'a','h','lease-1',100.0,2.0,5.0,0,NULL,NULL,NULL,'{"loss": 0.125}');
CREATE INDEX ix_trials_state_lease ON trials (state, lease_expires_at);
CREATE INDEX ix_trials_config_key ON trials (sweep_id, config_key);
CREATE INDEX ix_metrics_curve ON metrics (trial_id, name, step, seq);
COMMIT;
