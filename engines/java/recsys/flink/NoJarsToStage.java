package recsys.flink;

import java.util.Collections;
import java.util.List;
import org.apache.beam.sdk.util.construction.resources.PipelineResourcesDetector;

/**
 * Tells Beam's Flink job server that a job needs no jars shipped with it.
 *
 * <p>The job server otherwise sends its whole class path to the JobManager with every
 * job, and each TaskManager downloads it again (docs/scaling-out.md says what that
 * costs), for classes every TaskManager already loads from its own class path
 * (engines/flink.py, _beam_jars). Selected per job by the pipeline option
 * --pipeline_resources_detector_factory_class (NoJarsToStageRegistrar makes the job
 * server accept it).
 */
public final class NoJarsToStage implements PipelineResourcesDetector.Factory {

  /** Beam builds the factory named by the option through this method. */
  public static NoJarsToStage create() {
    return new NoJarsToStage();
  }

  @Override
  public PipelineResourcesDetector getPipelineResourcesDetector() {
    return new NoResources();
  }

  private static final class NoResources implements PipelineResourcesDetector {
    private static final long serialVersionUID = 1L;

    @Override
    public List<String> detect(ClassLoader classLoader) {
      return Collections.emptyList();
    }
  }
}
