package recsys.flink;

import java.util.Collections;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PipelineOptionsRegistrar;
import org.apache.beam.sdk.util.construction.resources.PipelineResourcesOptions;

/**
 * Registers Beam's PipelineResourcesOptions with the job server, which then lists them
 * among the options it accepts: the Python SDK drops any option the job server does not
 * list, so without this it would never pass on --pipeline_resources_detector_factory_class.
 */
public final class NoJarsToStageRegistrar implements PipelineOptionsRegistrar {
  @Override
  public Iterable<Class<? extends PipelineOptions>> getPipelineOptions() {
    return Collections.singletonList(PipelineResourcesOptions.class);
  }
}
