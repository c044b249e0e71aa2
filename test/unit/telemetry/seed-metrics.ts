// The metric table of the monitoring seed (shared/seeds/monitoring-v0.10.md), for the unit and
// the Prometheus integration tests.
/** name → [type, labels] exactly as the seed's table lists them. */
export const SEED_METRICS: Record<string, [string, string[]]> = {
  libvirt_volume_provisioner_requests_total: ['counter', ['method', 'endpoint', 'status']],
  libvirt_volume_provisioner_request_duration_seconds: ['histogram', ['method', 'endpoint']],
  libvirt_volume_provisioner_active_jobs: ['gauge', []],
  libvirt_volume_provisioner_jobs_total: ['counter', ['status']],
  libvirt_volume_provisioner_job_duration_seconds: ['histogram', ['status']],
  libvirt_volume_provisioner_cache_hits_total: ['counter', []],
  libvirt_volume_provisioner_cache_misses_total: ['counter', []],
  libvirt_volume_provisioner_cache_hit_ratio: ['gauge', []],
  libvirt_volume_provisioner_images_downloaded_total: ['counter', []],
  libvirt_volume_provisioner_image_download_size_bytes: ['histogram', ['image_type']],
  libvirt_volume_provisioner_image_errors_total: ['counter', ['operation', 'error_type']],
  libvirt_volume_provisioner_storage_operations_total: ['counter', ['operation', 'result']],
  libvirt_volume_provisioner_storage_errors_total: ['counter', ['operation', 'error_type']],
  libvirt_volume_provisioner_stage_duration_seconds: ['histogram', ['stage']],
  libvirt_volume_provisioner_stage_throughput_bytes_per_second: ['gauge', ['stage']],
  libvirt_volume_provisioner_health_status: ['gauge', []],
  libvirt_volume_provisioner_dependencies_up: ['gauge', ['dependency']],
};
