package polybus

import (
	"encoding/json"
	"time"
)

// KafkaConfig is the kafka section of Config: how a kafka:// bus connects, the topics it
// creates and how its consumers commit. Zero fields take the core's defaults. Its JSON form
// uses the core's names (client_id, security_protocol, sasl_mechanism, username, password,
// tls_ca, tls_cert, tls_key, partitions, replication_factor, compression, linger_ms,
// session_timeout_ms, commit_interval_ms, metadata_refresh_ms, properties).
type KafkaConfig struct {
	// ClientID is the client id the brokers see (default: Config.Name, else "polybus").
	ClientID string
	// SecurityProtocol is "plaintext", "ssl", "sasl_plaintext" or "sasl_ssl" (default: from
	// the credentials and TLS files set).
	SecurityProtocol string
	// SASLMechanism is "PLAIN" (the default with a Username), "SCRAM-SHA-256" or
	// "SCRAM-SHA-512".
	SASLMechanism string
	// Username is the SASL user name, with Password.
	Username string
	// Password goes with Username.
	Password string
	// TLSCA is the path of a PEM file of CA certificates to trust.
	TLSCA string
	// TLSCert is the path of the PEM client certificate, with TLSKey.
	TLSCert string
	// TLSKey is the path of the PEM client private key, with TLSCert.
	TLSKey string
	// Partitions of the topics the bus creates (default 1, which keeps a topic's events in
	// publish order; raise it to spread a group's work, order then holds per key).
	Partitions int
	// ReplicationFactor of the topics the bus creates (default 1).
	ReplicationFactor int
	// Compression of produced batches: "none" (default), "gzip", "snappy" or "lz4".
	Compression string
	// Linger is how long the producer waits to fill a batch (default 0, lowest latency).
	Linger time.Duration
	// SessionTimeout is how long the group coordinator waits for a silent member before
	// giving its partitions to others (default 45s).
	SessionTimeout time.Duration
	// CommitInterval is how often the offsets of handled events are committed (default 1s).
	CommitInterval time.Duration
	// MetadataRefresh is how often a wildcard subscription looks for new topics (default 1s).
	MetadataRefresh time.Duration
	// Properties are raw librdkafka properties, applied last to every client.
	Properties map[string]string
}

// kafkaJSON is the JSON form of KafkaConfig.
type kafkaJSON struct {
	ClientID          string            `json:"client_id,omitempty"`
	SecurityProtocol  string            `json:"security_protocol,omitempty"`
	SASLMechanism     string            `json:"sasl_mechanism,omitempty"`
	Username          string            `json:"username,omitempty"`
	Password          string            `json:"password,omitempty"`
	TLSCA             string            `json:"tls_ca,omitempty"`
	TLSCert           string            `json:"tls_cert,omitempty"`
	TLSKey            string            `json:"tls_key,omitempty"`
	Partitions        int               `json:"partitions,omitempty"`
	ReplicationFactor int               `json:"replication_factor,omitempty"`
	Compression       string            `json:"compression,omitempty"`
	LingerMS          int64             `json:"linger_ms,omitempty"`
	SessionTimeoutMS  int64             `json:"session_timeout_ms,omitempty"`
	CommitIntervalMS  int64             `json:"commit_interval_ms,omitempty"`
	MetadataRefreshMS int64             `json:"metadata_refresh_ms,omitempty"`
	Properties        map[string]string `json:"properties,omitempty"`
}

// toJSON returns the JSON form of the section, nil for nil.
func (k *KafkaConfig) toJSON() (*kafkaJSON, error) {
	if k == nil {
		return nil, nil
	}
	out := &kafkaJSON{
		ClientID:          k.ClientID,
		SecurityProtocol:  k.SecurityProtocol,
		SASLMechanism:     k.SASLMechanism,
		Username:          k.Username,
		Password:          k.Password,
		TLSCA:             k.TLSCA,
		TLSCert:           k.TLSCert,
		TLSKey:            k.TLSKey,
		Partitions:        k.Partitions,
		ReplicationFactor: k.ReplicationFactor,
		Compression:       k.Compression,
		Properties:        k.Properties,
	}
	err := toMillis(
		msField{"Kafka.Linger", k.Linger, &out.LingerMS},
		msField{"Kafka.SessionTimeout", k.SessionTimeout, &out.SessionTimeoutMS},
		msField{"Kafka.CommitInterval", k.CommitInterval, &out.CommitIntervalMS},
		msField{"Kafka.MetadataRefresh", k.MetadataRefresh, &out.MetadataRefreshMS},
	)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// MarshalJSON returns the JSON form of the section, with the core's names. Durations are
// rounded up to whole milliseconds.
func (k KafkaConfig) MarshalJSON() ([]byte, error) {
	out, err := k.toJSON()
	if err != nil {
		return nil, err
	}
	return json.Marshal(out)
}
