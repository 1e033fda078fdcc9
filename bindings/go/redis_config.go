package polybus

import (
	"encoding/json"
	"time"
)

// RedisConfig is the redis section of Config: how a redis:// (Streams) or redis+pubsub://
// (Pub/Sub) bus connects, with the names due's Redis users know (Addrs, DB, Username, Password,
// the TLS files, MaxRetries), and the Streams settings. Zero fields take the core's defaults.
// Its JSON form uses the core's names (addrs, db, username, password, tls_ca, tls_cert,
// tls_key, command_timeout_ms, max_retries, max_len, claim_idle_ms, block_ms,
// scan_interval_ms).
type RedisConfig struct {
	// Addrs are servers as "host:port", tried in order when connecting (default: the URL's
	// host).
	Addrs []string
	// DB is the database number; 0 leaves the URL's ("redis://host:6379/2"), else 0.
	DB int
	// Username is the ACL user name (default: the URL's, else the default user).
	Username string
	// Password goes with Username (default: the URL's, else none).
	Password string
	// TLSCA is the path of a PEM file of CA certificates to trust (TLS; rediss:// URLs).
	TLSCA string
	// TLSCert is the path of the PEM client certificate, with TLSKey.
	TLSCert string
	// TLSKey is the path of the PEM client private key, with TLSCert.
	TLSKey string
	// CommandTimeout bounds one command (default 5s).
	CommandTimeout time.Duration
	// MaxRetries is how often a lost connection is re-established before a command fails
	// (default 3). Commands themselves are never retried: a publish is reported once.
	MaxRetries int
	// MaxLen is the approximate length each topic's stream is trimmed to on publish (default
	// 100000; -1 keeps everything). Streams only.
	MaxLen int64
	// ClaimIdle is how long an event may stay delivered but unacknowledged before another
	// member of the group reclaims it (default 30s). Streams only.
	ClaimIdle time.Duration
	// Block is how long one blocking read waits for new events (default 1s). Streams only.
	Block time.Duration
	// ScanInterval is how often a wildcard subscription looks for new streams (default 1s).
	// Streams only.
	ScanInterval time.Duration
}

// redisJSON is the JSON form of RedisConfig.
type redisJSON struct {
	Addrs            []string `json:"addrs,omitempty"`
	DB               int      `json:"db,omitempty"`
	Username         string   `json:"username,omitempty"`
	Password         string   `json:"password,omitempty"`
	TLSCA            string   `json:"tls_ca,omitempty"`
	TLSCert          string   `json:"tls_cert,omitempty"`
	TLSKey           string   `json:"tls_key,omitempty"`
	CommandTimeoutMS int64    `json:"command_timeout_ms,omitempty"`
	MaxRetries       int      `json:"max_retries,omitempty"`
	MaxLen           *int64   `json:"max_len,omitempty"`
	ClaimIdleMS      int64    `json:"claim_idle_ms,omitempty"`
	BlockMS          int64    `json:"block_ms,omitempty"`
	ScanIntervalMS   int64    `json:"scan_interval_ms,omitempty"`
}

// toJSON returns the JSON form of the section, nil for nil.
func (r *RedisConfig) toJSON() (*redisJSON, error) {
	if r == nil {
		return nil, nil
	}
	out := &redisJSON{
		Addrs:      r.Addrs,
		DB:         r.DB,
		Username:   r.Username,
		Password:   r.Password,
		TLSCA:      r.TLSCA,
		TLSCert:    r.TLSCert,
		TLSKey:     r.TLSKey,
		MaxRetries: r.MaxRetries,
	}
	switch {
	case r.MaxLen < -1:
		return nil, &Error{Code: StatusInvalidConfig, Message: "invalid config: Redis.MaxLen must be -1 (keep everything), 0 (the default) or positive"}
	case r.MaxLen == -1:
		zero := int64(0)
		out.MaxLen = &zero
	case r.MaxLen > 0:
		out.MaxLen = &r.MaxLen
	}
	err := toMillis(
		msField{"Redis.CommandTimeout", r.CommandTimeout, &out.CommandTimeoutMS},
		msField{"Redis.ClaimIdle", r.ClaimIdle, &out.ClaimIdleMS},
		msField{"Redis.Block", r.Block, &out.BlockMS},
		msField{"Redis.ScanInterval", r.ScanInterval, &out.ScanIntervalMS},
	)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// MarshalJSON returns the JSON form of the section, with the core's names. Durations are
// rounded up to whole milliseconds.
func (r RedisConfig) MarshalJSON() ([]byte, error) {
	out, err := r.toJSON()
	if err != nil {
		return nil, err
	}
	return json.Marshal(out)
}
